// File modes (agent.zdsSocketMode, agent.apiSocketMode, any key whose schema is `fileMode`).
//
// People write 0600, "0600", 0o600 or 384. YAML 1.2 (the `yaml` package's default) reads an
// unquoted 0440 as decimal 440 = 0o670: a group-writable socket. So for mode keys the loader
// takes an unquoted scalar with a leading 0 as written (readModesAsWritten), and text is always
// octal, like chmod's argument: "0600", "600", "0o600", and so are the environment and flags.
// Numbers that YAML or JSON produced (384, 0o600, 0x180) are taken as they are.
import { isMap, isScalar, type Document } from "yaml";
import { z } from "zod";

const HINT = 'write it like 0600, "0600" or 0o600';

function fromText(s: string): number | string {
  const m = /^0[oO]([0-7]+)$/.exec(s) ?? /^([0-7]+)$/.exec(s);
  if (!m) return `${JSON.stringify(s)} is not an octal file mode (${HINT})`;
  const mode = parseInt(m[1]!, 8);
  return mode > 0o777 ? `${JSON.stringify(s)} is more than 0777 (${HINT})` : mode;
}

function fromNumber(v: number): number | string {
  if (!Number.isInteger(v) || v < 0) return `${v} is not a file mode (a whole number from 0 to 0777)`;
  if (v <= 0o777) return v;
  const octal = /^[0-7]+$/.test(String(v)) ? `0${v}` : "0600";
  return `${v} is more than 0777 (= 511; a number without a leading 0 is decimal: write octal as ${octal})`;
}

/** The schema of a file-mode key: its output is the mode as a number. */
export const fileMode = z.unknown().transform((v, ctx) => {
  const r = typeof v === "number" ? fromNumber(v) : typeof v === "string" ? fromText(v) : `${JSON.stringify(v)} is not a file mode (${HINT})`;
  if (typeof r === "number") return r;
  ctx.addIssue({ code: "custom", message: r });
  return z.NEVER;
});

/**
 * For the mode keys at `paths`, an unquoted scalar with a leading 0 (0600, 0440) becomes its
 * source text, which fileMode reads as octal. Other keys keep YAML's reading.
 */
export function readModesAsWritten(doc: Document, paths: readonly string[][]): void {
  const wanted = new Set(paths.map((p) => p.join(".")));
  const walk = (node: unknown, path: string[]): void => {
    if (!isMap(node)) return;
    for (const pair of node.items) {
      if (!isScalar(pair.key)) continue;
      const p = [...path, String(pair.key.value)];
      const v = pair.value;
      if (wanted.has(p.join(".")) && isScalar(v) && v.type === "PLAIN" && typeof v.value === "number" && /^0[0-9]+$/.test(v.source ?? "")) v.value = v.source;
      else walk(v, p);
    }
  };
  walk(doc.contents, []);
}

const rwx = (bits: number) => `${bits & 4 ? "r" : "-"}${bits & 2 ? "w" : "-"}${bits & 1 ? "x" : "-"}`;

/** Octal as operators write it: 0600. */
export const octal = (mode: number) => `0${mode.toString(8).padStart(3, "0")}`;

/**
 * Warnings for modes that grant anything to group or others: the sockets are root's alone (the
 * ZDS socket hands pods' network namespaces to whoever connects; the API enrolls pods).
 */
export function modeWarnings(cfg: Record<string, unknown>, paths: readonly string[][]): string[] {
  const out: string[] = [];
  for (const path of paths) {
    let v: unknown = cfg;
    for (const k of path) v = (v as Record<string, unknown> | undefined)?.[k];
    if (typeof v !== "number" || (v & 0o077) === 0) continue;
    const who = [(v >> 3) & 7 ? `its group ${rwx((v >> 3) & 7)}` : "", v & 7 ? `others ${rwx(v & 7)}` : ""].filter(Boolean).join(" and ");
    out.push(`${path.join(".")} is ${octal(v)} (${rwx(v >> 6)}${rwx(v >> 3)}${rwx(v)}): it grants ${who} on a socket meant for root alone (the default is 0600)`);
  }
  return out;
}
