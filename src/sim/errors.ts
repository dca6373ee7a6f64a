// The harness's own error, and how its teardown steps run: every step, even after a failure.

/** Any failure of the harness itself (a command it ran failed, a wait timed out, …). */
export class NetsimError extends Error {
  override name = "NetsimError";
}

/**
 * Teardown goes on past a failure so that it releases everything it can: each `run` awaits its
 * step and keeps the error, `done` then throws the first one.
 */
export class TeardownSteps {
  private readonly errors: unknown[] = [];

  async run(f: () => Promise<unknown>): Promise<void> {
    try {
      await f();
    } catch (e) {
      this.errors.push(e);
    }
  }

  done(): void {
    if (this.errors.length > 0) throw this.errors[0];
  }
}
