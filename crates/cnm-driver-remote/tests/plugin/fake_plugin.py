#!/usr/bin/env python3
"""A Docker network and IPAM plugin for cnm's tests, standard library only.

It speaks the plugin protocol over a unix socket (or TCP), records every request it gets,
and can be told to misbehave, per method:

    faults.json  {"NetworkDriver.Join": "hang", ...}   (re-read on every request)

    hang          never answer
    work-hang     do the work, then never answer
    garbage       answer 200 with a body that is not JSON
    work-garbage  do the work, then answer garbage
    work-bogus    do the work, then answer success naming an interface that does not exist
    500           answer HTTP 500 with {"Err": "..."} (and "Error" for IpamDriver calls)
    refuse        answer 200 with {"Err": "..."} / {"Error": "..."}
    404           answer 404
    die           exit at once (after recording the request)

Records: one JSON object per line in requests.jsonl:
    {"pid", "method", "accept", "content_type", "body"}  (body: parsed JSON, or null when empty)

With --kernel it makes real links in its own network namespace (the test's host): a bridge
per network (with the gateway address), a veth pair per join (host end on the bridge, the
other end returned as SrcName), all removed again by Leave and DeleteNetwork.

With --require-activation every call before Plugin.Activate answers 404 "plugin not
activated" (what a restarted plugin that insists on the handshake looks like).

State (networks, endpoints, pools) is kept in state.json, so a restarted plugin knows what it
made, as a real plugin with a datastore does.
"""

import argparse
import ipaddress
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

LOCK = threading.Lock()
ARGS = None
STATE = {"networks": {}, "endpoints": {}, "pools": {}}
ACTIVATED = False


def path(name):
    return os.path.join(ARGS.dir, name)


def load_state():
    global STATE
    try:
        with open(path("state.json")) as f:
            STATE = json.load(f)
    except FileNotFoundError:
        pass


def save_state():
    tmp = path("state.json.tmp")
    with open(tmp, "w") as f:
        json.dump(STATE, f)
    os.replace(tmp, path("state.json"))


def record(entry):
    with LOCK:
        with open(path("requests.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()


def faults():
    try:
        with open(path("faults.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def ip(*args):
    if not ARGS.kernel:
        return
    subprocess.run(["ip", *args], check=True, capture_output=True)


def ip_quiet(*args):
    if not ARGS.kernel:
        return
    subprocess.run(["ip", *args], check=False, capture_output=True)


class PluginError(Exception):
    pass


# --- NetworkDriver -------------------------------------------------------------------------

def capabilities(_):
    return {"Scope": ARGS.scope, "ConnectivityScope": ARGS.scope}


def create_network(req):
    nid = req["NetworkID"]
    if nid in STATE["networks"]:
        raise PluginError(f"network {nid} exists")
    generic = req["Options"].get("com.docker.network.generic", {})
    bridge = "rb" + nid[:10]
    gateway = req["IPv4Data"][0].get("Gateway", "") if req["IPv4Data"] else ""
    ip("link", "add", "name", bridge, "type", "bridge")
    if gateway:
        ip("addr", "add", gateway, "dev", bridge)
    ip("link", "set", bridge, "up")
    STATE["networks"][nid] = {"bridge": bridge, "gateway": gateway, "generic": generic}
    save_state()
    return {}


def delete_network(req):
    net = STATE["networks"].pop(req["NetworkID"], None)
    if net is None:
        raise PluginError(f"no network {req['NetworkID']}")
    ip_quiet("link", "del", net["bridge"])
    save_state()
    return {}


def create_endpoint(req):
    nid, eid = req["NetworkID"], req["EndpointID"]
    net = STATE["networks"].get(nid)
    if net is None:
        raise PluginError(f"no network {nid}")
    asked = req.get("Interface") or {}
    answer = {}
    if not asked.get("MacAddress") and net["generic"].get("test.mac") == "plugin":
        answer["MacAddress"] = "02:77:" + ":".join(eid[i:i + 2] for i in range(0, 8, 2))
    v6 = net["generic"].get("test.ipv6-address")
    if v6 and not asked.get("AddressIPv6"):
        answer["AddressIPv6"] = v6
    STATE["endpoints"][eid] = {"network": nid, "interface": asked}
    save_state()
    return {"Interface": answer} if answer else {}


def endpoint_oper_info(req):
    ep = STATE["endpoints"].get(req["EndpointID"])
    if ep is None:
        raise PluginError(f"no endpoint {req['EndpointID']}")
    return {"Value": {"network": ep["network"], "veth": ep.get("host_end", "")}}


def delete_endpoint(req):
    if STATE["endpoints"].pop(req["EndpointID"], None) is None:
        raise PluginError(f"no endpoint {req['EndpointID']}")
    save_state()
    return {}


def join(req):
    nid, eid = req["NetworkID"], req["EndpointID"]
    net = STATE["networks"].get(nid)
    ep = STATE["endpoints"].get(eid)
    if net is None or ep is None:
        raise PluginError(f"no endpoint {eid} on network {nid}")
    host_end, cont_end = "rh" + eid[:10], "rc" + eid[:10]
    ip("link", "add", "name", host_end, "type", "veth", "peer", "name", cont_end)
    ip("link", "set", host_end, "master", net["bridge"])
    ip("link", "set", host_end, "up")
    ep["host_end"] = host_end
    save_state()
    answer = {"InterfaceName": {"SrcName": cont_end,
                                "DstPrefix": net["generic"].get("test.dst-prefix", "eth")}}
    if net["gateway"]:
        answer["Gateway"] = net["gateway"].split("/")[0]
    if net["generic"].get("test.routes") == "yes" and net["gateway"]:
        answer["StaticRoutes"] = [
            {"Destination": "198.18.0.0/15", "RouteType": 0,
             "NextHop": net["gateway"].split("/")[0]},
            {"Destination": "192.0.2.0/24", "RouteType": 1},
        ]
    return answer


def leave(req):
    ep = STATE["endpoints"].get(req["EndpointID"])
    if ep is None:
        raise PluginError(f"no endpoint {req['EndpointID']}")
    host_end = ep.pop("host_end", None)
    if host_end:
        ip_quiet("link", "del", host_end)
    save_state()
    return {}


def empty(_):
    return {}


# --- IpamDriver ----------------------------------------------------------------------------

def ipam_capabilities(_):
    return {"RequiresMACAddress": False, "RequiresRequestReplay": ARGS.replay}


def address_spaces(_):
    return {"LocalDefaultAddressSpace": "cnmtest-local",
            "GlobalDefaultAddressSpace": "cnmtest-global"}


def request_pool(req):
    pools = STATE["pools"]
    if req.get("Pool"):
        pool = str(ipaddress.ip_network(req["Pool"]))
    else:
        free = [p for p in ARGS.pools if pools.get(f"{req['AddressSpace']}:{p}", {}).get("refs", 0) == 0]
        if not free:
            raise PluginError("no pool left")
        pool = free[0]
    pid = f"{req['AddressSpace']}:{pool}"
    entry = pools.setdefault(pid, {"pool": pool, "refs": 0, "taken": []})
    entry["refs"] += 1
    save_state()
    return {"PoolID": pid, "Pool": pool, "Data": {}}


def release_pool(req):
    entry = STATE["pools"].get(req["PoolID"])
    if entry is None or entry["refs"] == 0:
        raise PluginError(f"no pool {req['PoolID']}")
    entry["refs"] -= 1
    if entry["refs"] == 0:
        del STATE["pools"][req["PoolID"]]
    save_state()
    return {}


def request_address(req):
    entry = STATE["pools"].get(req["PoolID"])
    if entry is None:
        raise PluginError(f"no pool {req['PoolID']}")
    net = ipaddress.ip_network(entry["pool"])
    if req.get("Address"):
        addr = req["Address"]
        if addr in entry["taken"]:
            raise PluginError(f"address {addr} in use")
    else:
        addr = next((str(h) for h in net.hosts() if str(h) not in entry["taken"]), None)
        if addr is None:
            raise PluginError("pool exhausted")
    entry["taken"].append(addr)
    save_state()
    return {"Address": f"{addr}/{net.prefixlen}", "Data": {}}


def release_address(req):
    entry = STATE["pools"].get(req["PoolID"])
    if entry is None or req["Address"] not in entry["taken"]:
        raise PluginError(f"address {req['Address']} not allocated in {req['PoolID']}")
    entry["taken"].remove(req["Address"])
    save_state()
    return {}


HANDLERS = {
    "NetworkDriver.GetCapabilities": capabilities,
    "NetworkDriver.CreateNetwork": create_network,
    "NetworkDriver.DeleteNetwork": delete_network,
    "NetworkDriver.CreateEndpoint": create_endpoint,
    "NetworkDriver.EndpointOperInfo": endpoint_oper_info,
    "NetworkDriver.DeleteEndpoint": delete_endpoint,
    "NetworkDriver.Join": join,
    "NetworkDriver.Leave": leave,
    "NetworkDriver.DiscoverNew": empty,
    "NetworkDriver.DiscoverDelete": empty,
    "NetworkDriver.ProgramExternalConnectivity": empty,
    "NetworkDriver.RevokeExternalConnectivity": empty,
    "IpamDriver.GetCapabilities": ipam_capabilities,
    "IpamDriver.GetDefaultAddressSpaces": address_spaces,
    "IpamDriver.RequestPool": request_pool,
    "IpamDriver.ReleasePool": release_pool,
    "IpamDriver.RequestAddress": request_address,
    "IpamDriver.ReleaseAddress": release_address,
}


def error_body(method, text):
    key = "Error" if method.startswith("IpamDriver.") else "Err"
    return {key: text}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def send(self, status, raw):
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.docker.plugins.v1+json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(raw)
        self.wfile.flush()

    def send_json(self, status, value):
        self.send(status, json.dumps(value).encode())

    def do_POST(self):
        global ACTIVATED
        method = self.path.lstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = {"unparsable": raw.decode(errors="replace")}
        record({"pid": os.getpid(), "method": method,
                "accept": self.headers.get("Accept"),
                "content_type": self.headers.get("Content-Type"),
                "body": body})
        fault = faults().get(method)
        if fault == "die":
            os._exit(3)
        if fault == "hang":
            time.sleep(3600)
            return
        if fault == "404":
            return self.send_json(404, error_body(method, "404 page not found"))
        if fault == "500":
            return self.send_json(500, error_body(method, f"simulated failure of {method}"))
        if fault == "refuse":
            return self.send_json(200, error_body(method, f"simulated refusal of {method}"))
        if fault == "garbage":
            return self.send(200, b"<html>this is not JSON")
        if method == "Plugin.Activate":
            ACTIVATED = True
            return self.send_json(200, {"Implements": ARGS.implements})
        if ARGS.require_activation and not ACTIVATED:
            return self.send_json(404, error_body(method, "plugin not activated"))
        handler = HANDLERS.get(method)
        if handler is None:
            return self.send_json(404, error_body(method, "404 page not found"))
        try:
            with LOCK:
                answer = handler(body or {})
        except PluginError as e:
            return self.send_json(200, error_body(method, str(e)))
        except (subprocess.CalledProcessError, KeyError, ValueError) as e:
            detail = getattr(e, "stderr", b"") or b""
            return self.send_json(500, error_body(method, f"{e} {detail.decode(errors='replace')}"))
        if fault == "work-hang":
            time.sleep(3600)
            return
        if fault == "work-garbage":
            return self.send(200, b"\x00\x01 not JSON either")
        if fault == "work-bogus" and "InterfaceName" in answer:
            answer["InterfaceName"]["SrcName"] = "nosuchif0"
        self.send_json(200, answer)


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # A loaded machine may queue more than the default 5 connections before the next accept.
    request_queue_size = 128

    def get_request(self):
        conn, _ = self.socket.accept()
        # BaseHTTPRequestHandler wants a client address it can format.
        return conn, ("unix", 0)


class TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--socket")
    p.add_argument("--tcp", action="store_true", help="listen on 127.0.0.1, any port")
    p.add_argument("--dir", required=True)
    p.add_argument("--implements", default="NetworkDriver")
    p.add_argument("--scope", default="local")
    p.add_argument("--pools", default="")
    p.add_argument("--kernel", action="store_true")
    p.add_argument("--require-activation", action="store_true")
    p.add_argument("--replay", action="store_true", help="IPAM: RequiresRequestReplay")
    ARGS = p.parse_args()
    ARGS.implements = [i for i in ARGS.implements.split(",") if i]
    ARGS.pools = [x for x in ARGS.pools.split(",") if x]
    load_state()
    if ARGS.tcp:
        server = TcpServer(("127.0.0.1", 0), Handler)
        where = "tcp://127.0.0.1:%d" % server.server_address[1]
    else:
        try:
            os.unlink(ARGS.socket)
        except FileNotFoundError:
            pass
        server = UnixServer(ARGS.socket, Handler)
        where = "unix://" + ARGS.socket
    print("READY " + where, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
