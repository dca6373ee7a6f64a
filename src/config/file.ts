// Reads the config file as text, refusing early what cannot be a config: more than 1 MiB (a
// binary given as --config once cost 24 s of CPU in the YAML parser; 8 MiB of YAML-looking
// bytes exhausted 19 GB of memory), NUL bytes, or bytes that are not UTF-8.
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { ConfigError } from "./errors.ts";

export const MAX_CONFIG_BYTES = 1024 * 1024;
/**
 * The YAML parser's time and memory grow steeply with flow nesting: 1 MiB of `{` took 12.5 s and
 * ~3.5 GB before it failed (measured 2026-12-03). No config nests more than a few levels.
 */
export const MAX_FLOW_DEPTH = 64;
const LIMIT = "the 1 MiB limit for a config file (is it the right file?)";

/** The file's text (a UTF-8 byte order mark removed). Throws ConfigError naming the file. */
export function readConfigText(file: string): string {
  const fail = (what: string): never => {
    throw new ConfigError(`config ${file}: ${what}`);
  };
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch (e) {
    return fail(`cannot read: ${(e as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) fail("is a directory, not a file");
    if (st.isFile() && st.size > MAX_CONFIG_BYTES) fail(`${(st.size / MAX_CONFIG_BYTES).toFixed(1)} MiB is over ${LIMIT}`);
    // Devices and pipes report no size: read one byte past the limit at most.
    const buf = Buffer.allocUnsafe(MAX_CONFIG_BYTES + 1);
    let n = 0;
    for (let r = -1; r !== 0 && n < buf.length; n += r) {
      try {
        r = readSync(fd, buf, n, buf.length - n, null);
      } catch (e) {
        return fail(`cannot read: ${(e as Error).message}`);
      }
    }
    if (n > MAX_CONFIG_BYTES) fail(`more than ${LIMIT}`);
    const bytes = buf.subarray(0, n);
    const nul = bytes.indexOf(0);
    if (nul >= 0) fail(`not a text file (a NUL byte at offset ${nul})`);
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      const at = firstInvalidUtf8(bytes);
      return fail(`not valid UTF-8 text (byte 0x${bytes[at]!.toString(16).padStart(2, "0")} at offset ${at})`);
    }
    const depth = flowDepth(text);
    if (depth > MAX_FLOW_DEPTH) fail(`[ and { nest ${depth} deep, over the limit of ${MAX_FLOW_DEPTH} (is it the right file?)`);
    return text;
  } finally {
    closeSync(fd);
  }
}

/** Offset of the first byte that does not start a valid UTF-8 sequence (only on the error path). */
function firstInvalidUtf8(b: Uint8Array): number {
  const dec = new TextDecoder("utf-8", { fatal: true });
  let i = 0;
  while (i < b.length) {
    const c = b[i]!;
    const len = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (len === 0 || i + len > b.length) return i;
    try {
      dec.decode(b.subarray(i, i + len));
    } catch {
      return i;
    }
    i += len;
  }
  return Math.max(0, b.length - 1);
}

/** Deepest nesting of YAML flow collections ([ and {), outside quoted scalars and comments. */
export function flowDepth(text: string): number {
  let depth = 0;
  let max = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "[" || c === "{") max = Math.max(max, ++depth);
    else if ((c === "]" || c === "}") && depth > 0) depth--;
    else if (c === "#" && (i === 0 || /\s/.test(text[i - 1]!))) {
      const nl = text.indexOf("\n", i);
      i = nl < 0 ? text.length : nl;
    } else if (c === '"') {
      for (i++; i < text.length && text[i] !== '"'; i++) if (text[i] === "\\") i++;
    } else if (c === "'") {
      for (i++; i < text.length; i++) {
        if (text[i] === "'") {
          if (text[i + 1] === "'") i++;
          else break;
        }
      }
    }
  }
  return max;
}
