// The openssl command line as an independent judge of what src/identity makes: certificate and
// CSR text, chain verification, and CSRs/CAs made without nshub's code. Arguments are passed as
// an argv array (no shell), input on stdin.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export function openssl(args: string[], input?: string): Run {
  const p = Bun.spawnSync(["openssl", ...args], { stdin: input === undefined ? "ignore" : Buffer.from(input), stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

function must(r: Run, what: string): string {
  if (r.code !== 0) throw new Error(`openssl ${what} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

/** `openssl x509 -noout -text` of a PEM certificate. */
export function certText(pem: string): string {
  return must(openssl(["x509", "-noout", "-text"], pem), "x509 -text");
}

/** `openssl req -noout -text -verify` of a PEM CSR (stdout + stderr, where "verify OK" goes). */
export function csrText(pem: string): string {
  const r = openssl(["req", "-noout", "-text", "-verify"], pem);
  return must(r, "req -text") + r.stderr;
}

/** The extension block named `name` in -text output: its value lines, trimmed. */
export function extension(text: string, name: string): { critical: boolean; value: string } | undefined {
  const lines = text.split("\n");
  const i = lines.findIndex((l) => l.trim().startsWith(`${name}:`));
  if (i < 0) return undefined;
  const head = lines[i]!.trim();
  const indent = lines[i]!.search(/\S/);
  const body: string[] = [];
  for (let j = i + 1; j < lines.length && lines[j]!.search(/\S/) > indent; j++) body.push(lines[j]!.trim());
  return { critical: head.endsWith("critical"), value: body.join(" ") };
}

/** Writes PEM files to a fresh temp dir and runs `openssl verify`; returns the run. */
export function verifyChain(root: string, leaf: string, intermediates: string[] = [], extra: string[] = []): Run {
  const dir = mkdtempSync(join(tmpdir(), "nshub-verify-"));
  writeFileSync(join(dir, "root.pem"), root);
  writeFileSync(join(dir, "leaf.pem"), leaf);
  const args = ["verify", "-CAfile", join(dir, "root.pem"), ...extra];
  if (intermediates.length > 0) {
    writeFileSync(join(dir, "untrusted.pem"), intermediates.join(""));
    args.push("-untrusted", join(dir, "untrusted.pem"));
  }
  return openssl([...args, join(dir, "leaf.pem")]);
}

/** An ECDSA P-256 (or other) key + CSR made by openssl, with the given subjectAltName text. */
export function opensslCsr(dir: string, name: string, san: string | undefined, keyArgs = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]): { csr: string; keyFile: string } {
  const keyFile = join(dir, `${name}.key`);
  const args = ["req", "-new", ...keyArgs, "-nodes", "-keyout", keyFile, "-subj", "/"];
  if (san !== undefined) args.push("-addext", `subjectAltName=${san}`);
  return { csr: must(openssl(args), "req -new"), keyFile };
}

/** Raw DER bytes of a certificate's issuer and subject Names (a small DER walk, no library). */
export function rawNames(pem: string): { issuer: Buffer; subject: Buffer } {
  const der = Buffer.from(pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, ""), "base64");
  const read = (buf: Buffer, at: number) => {
    let len = buf[at + 1]!;
    let hdr = 2;
    if (len & 0x80) {
      const n = len & 0x7f;
      len = 0;
      for (let k = 0; k < n; k++) len = len * 256 + buf[at + 2 + k]!;
      hdr = 2 + n;
    }
    return { tag: buf[at]!, start: at, body: at + hdr, end: at + hdr + len };
  };
  const cert = read(der, 0);
  const tbs = read(der, cert.body);
  const fields: { tag: number; start: number; end: number }[] = [];
  for (let at = tbs.body; at < tbs.end; ) {
    const f = read(der, at);
    fields.push(f);
    at = f.end;
  }
  // [0] version, serial, signature algorithm, issuer, validity, subject
  const off = fields[0]!.tag === 0xa0 ? 1 : 0;
  const slice = (f: { start: number; end: number }) => der.subarray(f.start, f.end);
  return { issuer: slice(fields[off + 2]!), subject: slice(fields[off + 4]!) };
}
