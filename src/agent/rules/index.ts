// In-pod redirection rules and the host-side probe rule (Istio ambient's REDIRECT mode, with
// nshub's chain and ipset names). See README-level docs in each module:
//   inpod.ts     the rule set as data / iptables-restore text (pure)
//   pod.ts       apply / remove / inspect inside a pod's netns (iptables-save/-restore)
//   iproute.ts   the fwmark ip rule and local route, read and changed through `ip -batch`
//   host.ts      the node's ipset + POSTROUTING SNAT for kubelet probes
//   iptables.ts  iptables-save parsing and transaction planning (pure)
//   exec.ts      running the tools (argv only, spawned inside the netns), errors, backend detection
export * from "./constants.ts";
export { RulesError, detectIptablesBackend, iptablesTools, type IptablesBackend, type RulesErrorReason } from "./exec.ts";
export { buildInpodRuleSet, renderInpodRules, resolveInpodOptions, ipRuleArgs, ipRouteArgs, type InpodRuleOptions, type InpodRuleSet, type ResolvedInpodOptions } from "./inpod.ts";
export { applyPodRules, removePodRules, inspectPodRules, type PodRulesOptions, type PodRulesState } from "./pod.ts";
export { HostProbeRules, hostProbeRuleSpec, renderHostProbeRules, type HostProbeOptions, type HostProbeState, type ProbePod } from "./host.ts";
export { canonicalRuleSpec, parseIptablesSave } from "./iptables.ts";
