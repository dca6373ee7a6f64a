// The last `cap` characters of a process's output, kept as the chunks arrived. Appending is
// O(1) amortized: whole chunks drop off the front once the rest still covers the cap, and the
// text is joined only when someone reads it. (Keeping one string and slicing it on every chunk
// copied the whole cap per chunk once it was full: with a chatty proxy that cost the benchmark
// a third of a CPU, taken from the processes it measures.)
export class OutputTail {
  #chunks: string[] = [];
  /** Index of the oldest kept chunk; the ones before it are dropped (compacted now and then). */
  #first = 0;
  #length = 0;
  #joined: string | undefined = "";

  constructor(readonly cap: number) {}

  append(s: string): void {
    if (!s) return;
    this.#chunks.push(s);
    this.#length += s.length;
    this.#joined = undefined;
    while (this.#chunks.length - this.#first > 1 && this.#length - this.#chunks[this.#first]!.length >= this.cap) {
      this.#length -= this.#chunks[this.#first++]!.length;
    }
    if (this.#first > 1024 && this.#first * 2 > this.#chunks.length) {
      this.#chunks = this.#chunks.slice(this.#first);
      this.#first = 0;
    }
  }

  /** Characters held now: at most the cap plus one chunk. */
  get held(): number {
    return this.#length;
  }

  /** The text, at most `cap` characters: the newest ones. */
  text(): string {
    if (this.#joined === undefined) {
      const all = (this.#first ? this.#chunks.slice(this.#first) : this.#chunks).join("");
      this.#joined = all.length > this.cap ? all.slice(all.length - this.cap) : all;
      this.#chunks = this.#joined ? [this.#joined] : [];
      this.#first = 0;
      this.#length = this.#joined.length;
    }
    return this.#joined;
  }
}
