// Process metrics for Bun. prom-client's collectDefaultMetrics was checked on Bun 1.4.5:
//   * process_open_fds, process_max_fds, process_resident_memory_bytes, process_cpu_*: correct
//     (they read /proc and process.cpuUsage, which Bun implements);
//   * nodejs_eventloop_lag_* (perf_hooks.monitorEventLoopDelay): WRONG — with the loop blocked
//     3 × 300 ms it reported max 8.7 ms;
//   * nodejs_active_handles/requests/resources: always empty (no process._getActiveHandles);
//   * nodejs_version_info reports Bun's Node-compat version (v26.x), process_heap_bytes is
//     VmData (6+ GB of reserved address space under JSC): both misleading.
// So we register our own small set, with Prometheus' standard process_* names (what ztunnel's
// process collector exports too), and measure event-loop lag with a timer.
import { readdirSync, readFileSync } from "node:fs";
import { Counter, Gauge, Histogram, type Registry } from "prom-client";

export interface ProcessMetricsOptions {
  /** Sampling period of the event-loop lag timer (default 100 ms). */
  lagIntervalMs?: number;
  /** Window of nshub_event_loop_lag_max_seconds (default 10 s). */
  lagWindowMs?: number;
  /** /proc root (tests). */
  procSelf?: string;
}

export interface ProcessMetrics {
  /** Stops the lag timer (it is unref'd: it never keeps the process alive). */
  stop(): void;
}

/** Open fds of this process (the directory listing's own fd is not counted). */
export function openFds(procSelf = "/proc/self"): number | undefined {
  try {
    return readdirSync(`${procSelf}/fd`).length - 1;
  } catch {
    return undefined;
  }
}

/** Soft RLIMIT_NOFILE from /proc/self/limits; undefined when unreadable or unlimited. */
export function maxFds(procSelf = "/proc/self"): number | undefined {
  try {
    const line = readFileSync(`${procSelf}/limits`, "utf8")
      .split("\n")
      .find((l) => l.startsWith("Max open files"));
    const soft = line?.slice("Max open files".length).trim().split(/\s+/)[0];
    return soft !== undefined && /^\d+$/.test(soft) ? Number(soft) : undefined;
  } catch {
    return undefined;
  }
}

/** VmRSS and VmSize from /proc/self/status in bytes (no page-size guess, unlike statm). */
export function memory(procSelf = "/proc/self"): { rss: number; virtual: number } | undefined {
  try {
    const status = readFileSync(`${procSelf}/status`, "utf8");
    const kb = (key: string) => {
      const m = new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status);
      return m ? Number(m[1]) * 1024 : undefined;
    };
    const rss = kb("VmRSS");
    const virtual = kb("VmSize");
    return rss === undefined || virtual === undefined ? undefined : { rss, virtual };
  } catch {
    return undefined;
  }
}

const LAG_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

export function registerProcessMetrics(registry: Registry, opts: ProcessMetricsOptions = {}): ProcessMetrics {
  const procSelf = opts.procSelf ?? "/proc/self";
  const registers = [registry];
  const startTime = Math.round(Date.now() / 1000 - process.uptime());

  // Counters whose value comes from the OS: reset() then inc(total) at collect time.
  const cpuCounter = (name: string, help: string, pick: (u: NodeJS.CpuUsage) => number) =>
    new Counter({
      name,
      help,
      registers,
      collect() {
        this.reset();
        this.inc(pick(process.cpuUsage()) / 1e6);
      },
    });
  cpuCounter("process_cpu_user_seconds_total", "Total user CPU time spent in seconds.", (u) => u.user);
  cpuCounter("process_cpu_system_seconds_total", "Total system CPU time spent in seconds.", (u) => u.system);
  cpuCounter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", (u) => u.user + u.system);

  new Gauge({ name: "process_start_time_seconds", help: "Start time of the process since unix epoch in seconds.", registers, collect() {
    this.set(startTime);
  } });
  new Gauge({ name: "process_resident_memory_bytes", help: "Resident memory size in bytes.", registers, collect() {
    const m = memory(procSelf);
    if (m) this.set(m.rss);
  } });
  new Gauge({ name: "process_virtual_memory_bytes", help: "Virtual memory size in bytes.", registers, collect() {
    const m = memory(procSelf);
    if (m) this.set(m.virtual);
  } });
  new Gauge({ name: "process_open_fds", help: "Number of open file descriptors.", registers, collect() {
    const n = openFds(procSelf);
    if (n !== undefined) this.set(n);
  } });
  new Gauge({ name: "process_max_fds", help: "Maximum number of open file descriptors.", registers, collect() {
    const n = maxFds(procSelf);
    if (n !== undefined) this.set(n);
  } });

  // Event-loop lag: a timer asks to run every `interval`; how late it runs is the lag.
  const interval = opts.lagIntervalMs ?? 100;
  const windowMs = opts.lagWindowMs ?? 10_000;
  const lagHist = new Histogram({
    name: "nshub_event_loop_lag_seconds",
    help: `How late a ${interval} ms timer fires: the time the event loop was busy with other work.`,
    buckets: LAG_BUCKETS,
    registers,
  });
  // Per-second maxima over the window, for a gauge that is easy to read and alert on.
  const slots = Math.max(1, Math.ceil(windowMs / 1000));
  const maxima = new Float64Array(slots);
  let slotSecond = Math.floor(Date.now() / 1000);
  const recordMax = (lag: number) => {
    const sec = Math.floor(Date.now() / 1000);
    if (sec !== slotSecond) {
      for (let s = slotSecond + 1; s <= sec && s - slotSecond <= slots; s++) maxima[s % slots] = 0;
      slotSecond = sec;
    }
    const i = sec % slots;
    if (lag > maxima[i]!) maxima[i] = lag;
  };
  new Gauge({
    name: "nshub_event_loop_lag_max_seconds",
    help: `Largest event-loop lag seen in the last ${Math.round(windowMs / 1000)} s.`,
    registers,
    collect() {
      recordMax(0); // rolls the window forward
      this.set(Math.max(...maxima));
    },
  });

  let expected = performance.now() + interval;
  let stopped = false;
  let timer: ReturnType<typeof setTimeout>;
  const tick = () => {
    const now = performance.now();
    const lag = Math.max(0, now - expected) / 1000;
    lagHist.observe(lag);
    recordMax(lag);
    if (stopped) return;
    expected = now + interval;
    timer = setTimeout(tick, interval);
    timer.unref?.();
  };
  timer = setTimeout(tick, interval);
  timer.unref?.();

  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
