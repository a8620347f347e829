// Real Yjs clients for the fan-out benchmark (bench/run.py --clients node).
//
// One Node process holds N providers of one room, each with its own Y.Doc and socket:
// y-websocket's WebsocketProvider (disableBc: without it providers of one process talk over
// BroadcastChannel and never touch the server) or, for Hocuspocus, its own HocuspocusProvider.
// The `ws` package is the WebSocket, so every socket offers permessage-deflate as browsers do.
// One of the providers writes small Y.Map entries at a fixed rate, under a map key of its
// own; the value carries the send time. The other N-1 observe the map and stamp each entry
// when Yjs hands it to them (after decoding and applying, as an application would see it).
//
// Usage: node fanout_client.mjs '<json config>'   (see `defaults` below)
// Stdout: one JSON object per line: {"event": "synced"}, {"event": "writing"},
// {"event": "drained"}, then {"event": "result", ...}; the harness reads the server's CPU at
// each event. Exit status 0, or 1 with {"event": "error", "error": "..."} on stdout.

import { performance } from "node:perf_hooks";
import { HocuspocusProvider } from "@hocuspocus/provider";
import WebSocket from "ws";
import { WebsocketProvider } from "y-websocket";
import * as Y from "yjs";

const defaults = {
  protocol: "y-websocket", // or "hocuspocus" (the document name travels in every message)
  serverUrl: "ws://127.0.0.1:1234", // y-websocket: the room is appended as a path segment
  room: "fanout",
  params: {}, // query parameters (crdtnb: {token})
  clients: 10, // providers in all, the writer included
  rate: 10, // probes per second
  window: 3, // seconds of writing
  drain: 3, // seconds to wait for late deliveries after the last write
  settle: 1, // seconds between the last sync and the first write (awareness of the joins)
  concurrency: 50, // connections being opened at once
  connectTimeout: 120, // seconds for every provider to be synced
  quietTimeout: 30, // seconds to wait for the joins' presence messages to stop
};

// Every WebsocketProvider adds a process "exit" listener.
process.setMaxListeners(0);

const config = { ...defaults, ...JSON.parse(process.argv[2] || "{}") };
const PROBE = /^SEQ(\d+)T(\d+)E$/;
const WRITER_KEY = "w0"; // one writer here; several would each take a key of their own

let awarenessUpdates = 0; // presence messages applied by all providers (the joins' storm)

const emit = (event, fields = {}) => process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const nowUs = () => Math.round(performance.now() * 1000);

/** One provider of the room: resolves `synced`, counts closes after it. */
class Client {
  constructor(index) {
    this.index = index;
    this.doc = new Y.Doc();
    this.map = this.doc.getMap("bench");
    this.closedAfterSync = 0;
    this.isSynced = false;
    this.synced = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    const onSynced = () => {
      if (!this.isSynced) {
        this.isSynced = true;
        this._resolve();
      }
    };
    const onClose = () => {
      if (this.isSynced) this.closedAfterSync += 1;
    };
    if (config.protocol === "hocuspocus") {
      this.provider = new HocuspocusProvider({
        url: config.serverUrl,
        name: config.room,
        document: this.doc,
        WebSocketPolyfill: WebSocket,
        onSynced: ({ state }) => state && onSynced(),
        onClose,
        onAuthenticationFailed: ({ reason }) => this._reject(new Error(`authentication failed: ${reason}`)),
      });
    } else {
      this.provider = new WebsocketProvider(config.serverUrl, config.room, this.doc, {
        WebSocketPolyfill: WebSocket,
        disableBc: true,
        params: config.params,
      });
      this.provider.on("synced", (state) => state && onSynced());
      this.provider.on("connection-close", onClose);
    }
    this.provider.awareness?.on("update", () => {
      awarenessUpdates += 1;
    });
  }

  /** The websocket extensions the server accepted (e.g. "permessage-deflate"), or "". */
  get extensions() {
    const socket = config.protocol === "hocuspocus" ? this.provider.configuration.websocketProvider.webSocket : this.provider.ws;
    return socket?.extensions ?? "";
  }

  destroy() {
    this.provider.destroy();
  }
}

/** Latencies in µs of every delivery in the measured window, and the count per receiver. */
class Deliveries {
  constructor(receivers) {
    this.latencies = [];
    this.sendTimes = [0]; // sendTimes[seq] in µs, filled by the writer
    this.count = 0;
    this.lastSeq = new Array(receivers).fill(0);
  }

  /** A receiver now holds the entry `seq`: entries it had not seen yet (a server may merge
   * several updates into one message, so the older ones arrive superseded) are delivered now. */
  seen(receiver, seq, sentUs, atUs) {
    const last = this.lastSeq[receiver];
    if (seq <= last) return;
    for (let s = last + 1; s < seq; s++) this.latencies.push(atUs - this.sendTimes[s]);
    this.latencies.push(atUs - sentUs);
    this.count += seq - last;
    this.lastSeq[receiver] = seq;
  }
}

function percentile(sorted, q) {
  if (sorted.length === 0) return null;
  // linear interpolation between closest ranks, as numpy.percentile does
  const pos = (q / 100) * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

async function connectAll(count) {
  const clients = [];
  // The first provider opens the room alone (pycrdt-websocket fails concurrent first joins).
  const first = new Client(0);
  clients.push(first);
  await first.synced;
  let next = 1;
  const worker = async () => {
    while (next < count) {
      const client = new Client(next++);
      clients.push(client);
      await client.synced;
    }
  };
  // a slow server's progress, for the harness's error message
  const progress = setInterval(() => {
    process.stderr.write(`${clients.filter((c) => c.isSynced).length} of ${count} providers synced\n`);
  }, 5000);
  try {
    await Promise.all(Array.from({ length: Math.min(config.concurrency, count) }, worker));
  } finally {
    clearInterval(progress);
  }
  return clients;
}

function withTimeout(promise, seconds, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took more than ${seconds} s`)), seconds * 1000);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function main() {
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const clients = await withTimeout(connectAll(config.clients), config.connectTimeout, `syncing ${config.clients} providers`);
  const connectSeconds = (performance.now() - t0) / 1000;
  const [writer, ...receivers] = clients;
  const deliveries = new Deliveries(receivers.length);
  receivers.forEach((client, i) => {
    client.map.observe((event) => {
      if (!event.keysChanged.has(WRITER_KEY)) return;
      const atUs = nowUs();
      const match = PROBE.exec(client.map.get(WRITER_KEY) ?? "");
      if (match) deliveries.seen(i, Number(match[1]), Number(match[2]), atUs);
    });
  });
  emit("synced", { connect_s: connectSeconds });
  // Every join's presence is relayed to everyone there: N² messages that are still arriving
  // when the last provider is synced. Writing starts once they stopped, and `settle` later.
  const quietUntil = performance.now() + config.quietTimeout * 1000;
  for (let seen = -1; seen !== awarenessUpdates && performance.now() < quietUntil; ) {
    seen = awarenessUpdates;
    await sleep(250);
  }
  await sleep(config.settle * 1000);

  const total = Math.max(1, Math.round(config.rate * config.window));
  const expected = total * receivers.length;
  const closedBefore = clients.reduce((n, c) => n + c.closedAfterSync, 0);
  emit("writing");
  const cpuWindow = process.cpuUsage();
  const start = performance.now();
  let seq = 0;
  await new Promise((resolve) => {
    const tick = () => {
      const now = performance.now();
      // catch up when the timer fired late: every entry due by now is written, one transaction each
      while (seq < total && start + (seq * 1000) / config.rate <= now) {
        seq += 1;
        const sentUs = nowUs();
        deliveries.sendTimes[seq] = sentUs;
        writer.map.set(WRITER_KEY, `SEQ${seq}T${sentUs}E`);
      }
      if (seq >= total) resolve();
      else setTimeout(tick, Math.max(0, start + (seq * 1000) / config.rate - performance.now()));
    };
    tick();
  });
  const deadline = performance.now() + config.drain * 1000;
  while (deliveries.count < expected && performance.now() < deadline) await sleep(5);
  const end = performance.now();
  emit("drained");

  const elapsed = (end - start) / 1000;
  const windowCpu = process.cpuUsage(cpuWindow);
  const runCpu = process.cpuUsage(cpu0);
  const sorted = Float64Array.from(deliveries.latencies).sort();
  const ms = (us) => (us === null ? null : us / 1000);
  emit("result", {
    clients: config.clients,
    receivers: receivers.length,
    rate: config.rate,
    sent: total,
    expected,
    delivered: deliveries.count,
    lost: expected - deliveries.count,
    p50_ms: ms(percentile(sorted, 50)),
    p99_ms: ms(percentile(sorted, 99)),
    max_ms: sorted.length ? ms(sorted[sorted.length - 1]) : null,
    deliveries_per_s: deliveries.count / elapsed,
    window_s: elapsed,
    connect_s: connectSeconds,
    disconnected: clients.reduce((n, c) => n + c.closedAfterSync, 0) - closedBefore,
    client_cpu_util: (windowCpu.user + windowCpu.system) / 1e6 / elapsed,
    client_cpu_s: (runCpu.user + runCpu.system) / 1e6,
    extensions: writer.extensions,
  });
  for (const client of clients) client.destroy();
  await sleep(200); // let the close frames go out
}

main().then(
  () => process.exit(0),
  (error) => {
    emit("error", { error: String(error?.stack || error) });
    process.exit(1);
  },
);
