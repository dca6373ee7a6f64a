// The one error type of the config loader; its message is shown to the operator as is.
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}
