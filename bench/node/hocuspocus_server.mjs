// The Hocuspocus peer for bench/run.py: @hocuspocus/server as shipped, persistence off (no
// extensions: documents live in memory only, as on the y-websocket server).
// Usage: HOST=127.0.0.1 PORT=P node hocuspocus_server.mjs
import { Server } from "@hocuspocus/server";

const server = new Server({
  address: process.env.HOST || "127.0.0.1",
  port: Number(process.env.PORT || 1234),
  quiet: true,
  // The lean Python clients send nothing while they wait; Hocuspocus closes a connection
  // that has been silent for `timeout` (60 s by default; real providers renew their
  // awareness every 15 s). An hour keeps long benchmark points connected.
  timeout: 3_600_000,
});

await server.listen();
console.log(`hocuspocus listening on ${server.httpURL}`);
