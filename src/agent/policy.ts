// Enrollment policy: which pods get nshub's traffic capture, from `agent.enrollment` in the
// config. Namespaces and pods ("<namespace>/<name>") are matched against glob patterns:
//
//   *      any run of characters except '/'
//   ?      one character except '/'
//   [abc]  one of a set; ranges [a-z]; negation [!a-z] or [^a-z]
//   \x     a literal x
//
// A pod is enrolled when its namespace matches namespaces.include or "<ns>/<name>" matches
// pods.include, and neither matches an exclude pattern: exclude wins over every include.
// Operator overrides (`nshub enroll` / `unenroll`) are applied by the agent on top of this.
import { ConfigError } from "../config/load.ts";
import type { EnrollmentConfig } from "../config/schema.ts";

export interface Decision {
  enroll: boolean;
  /** Which rule decided, in words (shown in replies, logs and `nshub pods`). */
  reason: string;
  /**
   * The policy cannot tell now (the Kubernetes API not listed yet, or unreachable with the pod
   * unknown): a pod keeps its state; a new one is not enrolled until it can tell.
   */
  unknown?: boolean;
}

/**
 * What the agent asks whether a pod should be enrolled: the YAML patterns below, or the
 * Kubernetes API's labels (kube-enrollment.ts).
 */
export interface PodPolicy {
  decide(namespace: string, name: string): Decision;
  /** Nothing would ever be enrolled by it (the agent warns at start). */
  readonly empty: boolean;
  /** Awaited before a CNI ADD is decided (the API's watch may lag behind the runtime). */
  ready?(namespace: string, name: string): Promise<void>;
  /** What the policy's source knows of the pod (Kubernetes: its service account). */
  podInfo?(namespace: string, name: string): { serviceAccount?: string } | undefined;
}

interface Rule {
  pattern: string;
  key: string;
  re: RegExp;
}

export class EnrollmentPolicy implements PodPolicy {
  private constructor(
    private readonly nsInclude: Rule[],
    private readonly nsExclude: Rule[],
    private readonly podInclude: Rule[],
    private readonly podExclude: Rule[],
  ) {}

  /** Compiles the config's patterns. Throws ConfigError naming the key path of a bad pattern. */
  static fromConfig(cfg: EnrollmentConfig): EnrollmentPolicy {
    const base = "agent.enrollment";
    const compileAll = (list: readonly string[], key: string, kind: "namespace" | "pod") =>
      list.map((pattern, i) => {
        const where = `${base}.${key}[${i}]`;
        try {
          return { pattern, key: `${base}.${key}`, re: compileGlob(pattern, kind) };
        } catch (e) {
          throw new ConfigError(`${where}: ${(e as Error).message} (pattern ${JSON.stringify(pattern)})`);
        }
      });
    return new EnrollmentPolicy(
      compileAll(cfg.namespaces.include, "namespaces.include", "namespace"),
      compileAll(cfg.namespaces.exclude, "namespaces.exclude", "namespace"),
      compileAll(cfg.pods.include, "pods.include", "pod"),
      compileAll(cfg.pods.exclude, "pods.exclude", "pod"),
    );
  }

  decide(namespace: string, name: string): Decision {
    const pod = `${namespace}/${name}`;
    const nsEx = this.nsExclude.find((r) => r.re.test(namespace));
    if (nsEx) return { enroll: false, reason: `namespace ${namespace} matches ${nsEx.key} ${JSON.stringify(nsEx.pattern)}` };
    const podEx = this.podExclude.find((r) => r.re.test(pod));
    if (podEx) return { enroll: false, reason: `pod ${pod} matches ${podEx.key} ${JSON.stringify(podEx.pattern)}` };
    const nsIn = this.nsInclude.find((r) => r.re.test(namespace));
    if (nsIn) return { enroll: true, reason: `namespace ${namespace} matches ${nsIn.key} ${JSON.stringify(nsIn.pattern)}` };
    const podIn = this.podInclude.find((r) => r.re.test(pod));
    if (podIn) return { enroll: true, reason: `pod ${pod} matches ${podIn.key} ${JSON.stringify(podIn.pattern)}` };
    return { enroll: false, reason: `no agent.enrollment include pattern matches pod ${pod}` };
  }

  /** True when no include pattern exists at all (nothing is enrolled by policy). */
  get empty(): boolean {
    return this.nsInclude.length === 0 && this.podInclude.length === 0;
  }
}

/**
 * Compiles one glob to an anchored RegExp. `kind` "namespace" forbids '/'; "pod" requires
 * exactly one '/' between a namespace pattern and a name pattern. Throws Error with the reason.
 */
export function compileGlob(pattern: string, kind: "namespace" | "pod"): RegExp {
  if (pattern === "") throw new Error("empty pattern");
  let re = "^";
  let slashes = 0;
  let i = 0;
  while (i < pattern.length) {
    const ch = pattern[i]!;
    if (ch === "\\") {
      const next = pattern[i + 1];
      if (next === undefined) throw new Error("a trailing '\\' escapes nothing");
      re += escapeRe(next);
      i += 2;
      continue;
    }
    if (ch === "*") {
      re += "[^/]*";
      while (pattern[i + 1] === "*") i++;
    } else if (ch === "?") {
      re += "[^/]";
    } else if (ch === "[") {
      const end = findClassEnd(pattern, i);
      if (end < 0) throw new Error(`unterminated '[' at position ${i + 1}`);
      let body = pattern.slice(i + 1, end);
      let negate = false;
      if (body.startsWith("!") || body.startsWith("^")) {
        negate = true;
        body = body.slice(1);
      }
      if (body === "") throw new Error(`empty character class at position ${i + 1}`);
      if (body.includes("/")) throw new Error("'/' cannot be part of a character class");
      const cls = body.replace(/[\\\]^]/g, (c) => "\\" + c);
      re += negate ? `[^/${cls}]` : `[${cls}]`;
      i = end + 1;
      continue;
    } else if (ch === "/") {
      slashes++;
      re += "/";
    } else if (/[a-z0-9.-]/.test(ch)) {
      re += escapeRe(ch);
    } else {
      throw new Error(`character ${JSON.stringify(ch)} at position ${i + 1} never appears in Kubernetes names (lower-case letters, digits, '-', '.')`);
    }
    i++;
  }
  if (kind === "namespace" && slashes > 0) throw new Error("a namespace pattern cannot contain '/' (pod patterns go under pods:)");
  if (kind === "pod" && slashes !== 1) throw new Error(`a pod pattern is "<namespace>/<name>" with exactly one '/', found ${slashes}`);
  if (kind === "pod") {
    const [ns, name] = pattern.split("/");
    if (!ns || !name) throw new Error(`a pod pattern needs both parts, "<namespace>/<name>" (use "*" for any)`);
  }
  return new RegExp(re + "$");
}

function findClassEnd(p: string, start: number): number {
  let i = start + 1;
  if (p[i] === "!" || p[i] === "^") i++;
  if (p[i] === "]") i++; // a leading ']' is literal
  for (; i < p.length; i++) if (p[i] === "]") return i;
  return -1;
}

function escapeRe(ch: string): string {
  return ch.replace(/[.*+?^${}()|[\]\\/-]/g, (c) => "\\" + c);
}
