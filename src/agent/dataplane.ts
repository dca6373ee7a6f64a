// What the agent needs from the kernel side, behind one small interface: the in-pod rules and
// the host probe set (src/agent/rules), and the pods' addresses. The agent core only talks to
// this interface, so its logic is unit-testable with a fake.
import { applyPodRules, HostProbeRules, removePodRules, RulesError, type PodRulesOptions, type ProbePod } from "./rules/index.ts";
import { netnsAddresses } from "./discovery.ts";

export interface Dataplane {
  /** Installs (idempotently) the in-pod rules in the netns at `netnsPath`. All or nothing. */
  applyPod(netnsPath: string): Promise<void>;
  /** Removes the in-pod rules; a netns that is already gone is a success. */
  removePod(netnsPath: string): Promise<void>;
  /** Host probe set: setup and fill with exactly `pods` (agent start). */
  resetHost(pods: readonly ProbePod[]): Promise<void>;
  addHostPod(ip: string, uid: string): Promise<void>;
  removeHostPod(ip: string, uid: string): Promise<void>;
  /** The pod's addresses as configured in the netns at `netnsPath`. */
  addresses(netnsPath: string): Promise<string[]>;
}

export interface RulesDataplaneOptions {
  dnsCapture: boolean;
  hostProbeSnat: boolean;
  probeAddress: string;
  /** Tests: run host-side tools in this netns instead of the agent's own. */
  hostNetnsPath?: string;
}

/** The real dataplane: iptables/ip/ipset through src/agent/rules. */
export class RulesDataplane implements Dataplane {
  private readonly podOpts: PodRulesOptions;
  private readonly host: HostProbeRules | undefined;

  constructor(private readonly opts: RulesDataplaneOptions) {
    this.podOpts = { dnsCapture: opts.dnsCapture, probeAddress: opts.probeAddress, ipv6: false };
    this.host = new HostProbeRules({ probeAddress: opts.probeAddress, netnsPath: opts.hostNetnsPath });
  }

  applyPod(netnsPath: string): Promise<void> {
    return applyPodRules(netnsPath, this.podOpts);
  }

  async removePod(netnsPath: string): Promise<void> {
    try {
      await removePodRules(netnsPath, this.podOpts);
    } catch (e) {
      if (e instanceof RulesError && e.reason === "netns-missing") return;
      throw e;
    }
  }

  async resetHost(pods: readonly ProbePod[]): Promise<void> {
    if (!this.host) return;
    if (!this.opts.hostProbeSnat) {
      // Switched off: leave nothing of ours behind on the node.
      await this.host.teardown();
      return;
    }
    await this.host.setup();
    await this.host.reset(pods);
  }

  async addHostPod(ip: string, uid: string): Promise<void> {
    if (this.opts.hostProbeSnat) await this.host?.addPod(ip, uid);
  }

  async removeHostPod(ip: string, uid: string): Promise<void> {
    if (this.opts.hostProbeSnat) await this.host?.removePod(ip, uid);
  }

  addresses(netnsPath: string): Promise<string[]> {
    return netnsAddresses(netnsPath);
  }
}
