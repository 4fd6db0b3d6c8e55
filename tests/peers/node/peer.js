// An independent SMPP implementation (farhadi/node-smpp) as a test peer for gateway12123.
//
// It acts as SMSC (op "listen": the gateway's carrier link binds to it) or as ESME
// (op "connect": it binds to the gateway's listener), driven by JSON lines:
//
//   stdin  {"id": 1, "op": "listen"}                       -> {"reply": 1, "port": 40123}
//          {"id": 2, "op": "configure", "bind_statuses": [13], "submit_statuses": [0, 69],
//           "message_ids": ["001A2B02"]}                   -> {"reply": 2}
//          {"id": 3, "op": "connect", "port": 2775}        -> {"reply": 3, "session": 1}
//          {"id": 4, "op": "send", "session": 1, "command": "deliver_sm",
//           "params": {"short_message": {"hex": "6964..."}, "esm_class": 4}}
//                                                          -> {"reply": 4, "pdu": {...}}  (the response)
//          {"id": 5, "op": "close", "session": 1}          -> {"reply": 5}
//   stdout {"event": "session", "session": 2}              a connection to our SMSC
//          {"event": "pdu", "session": 2, "pdu": {...}}    every request received
//          {"event": "closed", "session": 2}
//
// PDUs travel as {"command", "command_status", "sequence_number", fields...}; octet
// strings (short_message, message_payload, unknown TLVs) as {"hex": "..."}: the library's
// text and time decoding is switched off so that the test sees what was on the wire.
// As SMSC it answers binds (ESME_ROK unless "bind_statuses" says otherwise, in order),
// submit_sm (statuses from "submit_statuses", in order, then ESME_ROK; ids from
// "message_ids", then 8-digit upper-case hex counting from 0x001A2B00), enquire_link and
// unbind on its own; everything else it receives is only reported.
"use strict";

const smpp = require("smpp");
const defs = require("smpp/lib/defs");
const readline = require("readline");

defs.filters.message.decode = (value) => value;
defs.filters.time.decode = (value) => value; // validity_period as written (section 7.1.1)
if (defs.tlvs.message_payload && defs.tlvs.message_payload.filter) {
  defs.tlvs.message_payload.filter.decode = (value) => value;
}

const sessions = new Map();
let nextSession = 1;
const smsc = { bindStatuses: [], submitStatuses: [], messageIds: [], counter: 0x001a2b00 };

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function toJson(pdu) {
  const result = {};
  for (const key of Object.keys(pdu)) {
    const value = pdu[key];
    if (typeof value === "function") continue;
    result[key] = Buffer.isBuffer(value) ? { hex: value.toString("hex") } : value;
  }
  return result;
}

function fromJson(params) {
  const result = {};
  for (const [key, value] of Object.entries(params || {})) {
    result[key] = value && typeof value === "object" && "hex" in value
      ? Buffer.from(value.hex, "hex") : value;
  }
  return result;
}

function track(session) {
  const number = nextSession++;
  sessions.set(number, session);
  session.on("close", () => out({ event: "closed", session: number }));
  session.on("error", (e) => out({ event: "error", session: number, message: String(e) }));
  session.on("pdu", (pdu) => {
    if (pdu.isResponse()) return;
    out({ event: "pdu", session: number, pdu: toJson(pdu) });
  });
  return number;
}

function serve(session) {
  const number = track(session);
  out({ event: "session", session: number });
  const bind = (pdu) => {
    const status = smsc.bindStatuses.length ? smsc.bindStatuses.shift() : 0;
    session.send(pdu.response(status ? { command_status: status } : { system_id: "NODESMSC" }));
  };
  session.on("bind_transceiver", bind);
  session.on("bind_transmitter", bind);
  session.on("bind_receiver", bind);
  session.on("enquire_link", (pdu) => session.send(pdu.response()));
  session.on("unbind", (pdu) => {
    session.send(pdu.response());
    session.close();
  });
  session.on("submit_sm", (pdu) => {
    const status = smsc.submitStatuses.length ? smsc.submitStatuses.shift() : 0;
    if (status) {
      session.send(pdu.response({ command_status: status }));
      return;
    }
    const id = smsc.messageIds.length
      ? smsc.messageIds.shift()
      : (smsc.counter++).toString(16).toUpperCase().padStart(8, "0");
    session.send(pdu.response({ message_id: id }));
  });
}

const server = smpp.createServer(serve);

function handle(request) {
  const reply = (extra) => out(Object.assign({ reply: request.id }, extra || {}));
  switch (request.op) {
    case "listen":
      if (server.listening) {
        reply({ port: server.address().port });
      } else {
        server.listen(0, "127.0.0.1", () => reply({ port: server.address().port }));
      }
      return;
    case "configure":
      if (request.bind_statuses) smsc.bindStatuses = request.bind_statuses.slice();
      if (request.submit_statuses) smsc.submitStatuses = request.submit_statuses.slice();
      if (request.message_ids) smsc.messageIds = request.message_ids.slice();
      reply();
      return;
    case "connect": {
      const session = smpp.connect({ host: "127.0.0.1", port: request.port }, () => reply({ session: number }));
      const number = track(session);
      session.on("enquire_link", (pdu) => session.send(pdu.response()));
      session.on("unbind", (pdu) => {
        session.send(pdu.response());
        session.close();
      });
      session.on("deliver_sm", (pdu) => {
        if (request.auto_deliver_sm_resp !== false) session.send(pdu.response());
      });
      return;
    }
    case "send": {
      const session = sessions.get(request.session);
      const pdu = new smpp.PDU(request.command, fromJson(request.params));
      if (pdu.isResponse()) {
        pdu.sequence_number = request.sequence_number;
        session.send(pdu, () => reply());
        return;
      }
      if (!session.send(pdu, (response) => reply({ pdu: toJson(response) }))) {
        reply({ error: "not writable" });
      }
      return;
    }
    case "close": {
      const session = sessions.get(request.session);
      if (session) session.destroy();
      reply();
      return;
    }
    default:
      reply({ error: "unknown op " + request.op });
  }
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  try {
    handle(JSON.parse(line));
  } catch (e) {
    out({ event: "error", message: String(e && e.stack || e) });
  }
});
process.stdin.on("end", () => process.exit(0));
