// How the demo prints: step headers, indented details, ✔/✘, bold and dim on a terminal. With
// --json it writes to stderr, so that stdout holds only the JSON summary.

/** The steps of the story, as the `[n/10]` headers count them. */
export const STEPS = 10;

const useColor = () => process.stdout.isTTY === true && !process.env.NO_COLOR;

export class Printer {
  private readonly color: boolean;
  /** Set after Ctrl-C while the step in progress winds down: its output would only confuse. */
  muted = false;
  constructor(readonly toStderr: boolean) {
    this.color = !toStderr && useColor();
  }
  line(text = ""): void {
    if (!this.muted) (this.toStderr ? process.stderr : process.stdout).write(text + "\n");
  }
  bold(s: string): string {
    return this.color ? `\x1b[1m${s}\x1b[0m` : s;
  }
  dim(s: string): string {
    return this.color ? `\x1b[2m${s}\x1b[0m` : s;
  }
  mark(ok: boolean): string {
    if (!this.color) return ok ? "✔" : "✘";
    return ok ? "\x1b[32m✔\x1b[0m" : "\x1b[31m✘\x1b[0m";
  }
  step(n: number, text: string): void {
    this.line(this.bold(`[${n}/${STEPS}] ${text} …`));
  }
  /** Detail lines under a step, indented. */
  info(text: string, indent = 6): void {
    for (const l of text.split("\n")) this.line(l === "" ? "" : " ".repeat(indent) + l);
  }
  cmd(text: string): void {
    this.info(this.dim(`$ ${text}`));
  }
}

export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}
