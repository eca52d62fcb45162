"""Drives cnmd with the Docker SDK for Python the way docker compose (v1, and tools built on the
SDK) does: create a project network with options, IPAM and labels, find it by label and name,
connect containers with an address and aliases, disconnect, remove, prune, info(), version(),
events with since/until, options no driver knows (kept with a Warning). DOCKER_HOST points at cnmd; containers c1 and c2 are cnm sandboxes.

Leaves the network `proj_keep` with c1 connected (address 10.51.0.20, alias `api`) for the Rust
test to check in cnm's own view. Exits non-zero on the first failed check.
"""

import os
import sys
import time

import docker
from docker.types import IPAMConfig, IPAMPool

PROJECT = "proj"
LABELS = {"com.docker.compose.project": PROJECT, "com.docker.compose.network": "default"}


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def main():
    host = os.environ["DOCKER_HOST"]
    for version in ("auto", "1.41"):
        client = docker.DockerClient(base_url=host, version=version)
        check(client.ping(), f"ping at API {version}")
        client.close()

    client = docker.DockerClient(base_url=host, version="auto")
    api = client.api
    check(api.api_version == "1.48", f"negotiated API version {api.api_version}")

    info = client.info()
    check("bridge" in info["Plugins"]["Network"], f"info() lists the bridge driver: {info['Plugins']}")
    check(info["Swarm"]["LocalNodeState"] == "inactive", "info() says swarm is inactive")
    check(info["Containers"] == 2, f"info() counts the two sandboxes: {info['Containers']}")
    check(info["KernelVersion"] == os.uname().release, "info() has the kernel version")
    version = client.version()
    engine = [c for c in version["Components"] if c["Name"] == "Engine"]
    check(len(engine) == 1 and engine[0]["Details"]["ApiVersion"] == "1.48", "version() has an Engine")
    check(version["MinAPIVersion"] == "1.12", "version() has the minimum API version")

    t0 = time.time()
    ipam = IPAMConfig(
        driver="default",
        pool_configs=[IPAMPool(subnet="10.50.0.0/24", iprange="10.50.0.128/25", gateway="10.50.0.1")],
    )
    net = client.networks.create(
        f"{PROJECT}_default",
        driver="bridge",
        options={"com.docker.network.driver.mtu": "1400"},
        ipam=ipam,
        labels=LABELS,
        attachable=True,
        check_duplicate=True,
    )
    net.reload()
    attrs = net.attrs
    check(attrs["Attachable"] is True, "Attachable is kept")
    check(attrs["Labels"] == LABELS, f"labels are kept: {attrs['Labels']}")
    check(attrs["Options"] == {"com.docker.network.driver.mtu": "1400"}, f"options: {attrs['Options']}")
    check(
        attrs["IPAM"]["Config"] == [{"Subnet": "10.50.0.0/24", "IPRange": "10.50.0.128/25", "Gateway": "10.50.0.1"}],
        f"IPAM config as given: {attrs['IPAM']}",
    )
    check("EnableIPv4" in attrs, "EnableIPv4 is shown at API 1.48")

    try:
        client.networks.create(f"{PROJECT}_default", check_duplicate=True)
        check(False, "a duplicate name is refused")
    except docker.errors.APIError as e:
        check(e.status_code == 409 and "already exists" in str(e), f"duplicate refused: {e}")

    try:
        client.networks.create("proj_overlap", ipam=IPAMConfig(pool_configs=[IPAMPool(subnet="10.50.0.0/25")]))
        check(False, "an overlapping subnet is refused")
    except docker.errors.APIError as e:
        check(
            e.status_code == 403 and "Pool overlaps with other one on this address space" in str(e),
            f"overlap refused in dockerd's words (what kind and minikube match): {e}",
        )

    by_label = client.networks.list(filters={"label": f"com.docker.compose.project={PROJECT}"})
    check([n.name for n in by_label] == [f"{PROJECT}_default"], f"found by label: {by_label}")
    by_name = client.networks.list(names=[f"{PROJECT}_default"])
    check(len(by_name) == 1 and by_name[0].id == net.id, "found by name")
    check(client.networks.get(net.id[:12]).name == f"{PROJECT}_default", "found by id prefix")
    dangling = [n.name for n in client.networks.list(filters={"dangling": True})]
    check(f"{PROJECT}_default" in dangling, f"unused network is dangling: {dangling}")

    net.connect("c1", ipv4_address="10.50.0.10", aliases=["web", "www"])
    api.connect_container_to_network("c2", net.id, aliases=["db"])
    net.reload()
    members = {c["Name"]: c for c in net.attrs["Containers"].values()}
    check(sorted(members) == ["c1", "c2"], f"both connected: {sorted(members)}")
    check(members["c1"]["IPv4Address"] == "10.50.0.10/24", f"c1 has its address: {members['c1']}")
    check(members["c2"]["IPv4Address"].startswith("10.50.0.1"), f"c2 is in the ip-range: {members['c2']}")
    in_use = [n.name for n in client.networks.list(filters={"dangling": False})]
    check(f"{PROJECT}_default" in in_use, "a used network is not dangling")

    try:
        net.remove()
        check(False, "a network in use cannot be removed")
    except docker.errors.APIError as e:
        check(e.status_code == 403 and "has active endpoints" in str(e), f"in use: {e}")

    net.disconnect("c1")
    net.disconnect("c2", force=True)
    try:
        net.disconnect("c2")
        check(False, "disconnecting twice fails")
    except docker.errors.APIError as e:
        check("is not connected to network" in str(e), f"not connected: {e}")
    try:
        net.connect("nosuch")
        check(False, "an unknown container is refused")
    except docker.errors.NotFound as e:
        check("No such container: nosuch" in str(e), f"no such container: {e}")
    net.remove()
    try:
        client.networks.get(f"{PROJECT}_default")
        check(False, "a removed network is gone")
    except docker.errors.NotFound:
        check(True, "removed network is not found")

    client.networks.create(f"{PROJECT}_tmp", labels={"com.docker.compose.project": PROJECT})
    client.networks.create("other_tmp")
    pruned = client.networks.prune(filters={"label": f"com.docker.compose.project={PROJECT}"})
    check(pruned["NetworksDeleted"] == [f"{PROJECT}_tmp"], f"prune by label: {pruned}")
    pruned = client.networks.prune()
    check(pruned["NetworksDeleted"] == ["other_tmp"], f"prune: {pruned}")
    pruned = client.networks.prune()
    check(pruned["NetworksDeleted"] is None, f"nothing to prune is null, as dockerd: {pruned}")
    t1 = time.time()

    events = list(client.events(since=t0, until=t1, decode=True, filters={"type": "network", "event": "create"}))
    names = [e["Actor"]["Attributes"].get("name") for e in events]
    check(names == [f"{PROJECT}_default", f"{PROJECT}_tmp", "other_tmp"], f"events replayed: {names}")

    # compose's driver_opts and ipam options that no driver knows: kept, shown, and warned about.
    resp = api.create_network(
        f"{PROJECT}_opts",
        driver="bridge",
        options={"com.example.custom": "1", "com.docker.network.bridge.enable_icc": "false"},
        ipam=IPAMConfig(options={"x": "y"}, pool_configs=[IPAMPool(subnet="10.52.0.0/24")]),
    )
    check(
        "com.example.custom" in resp["Warning"] and "enable_icc" not in resp["Warning"],
        f"unknown options are warned about: {resp}",
    )
    opts = client.networks.get(f"{PROJECT}_opts")
    check(opts.attrs["Options"]["com.example.custom"] == "1", f"kept: {opts.attrs['Options']}")
    check(opts.attrs["IPAM"]["Options"] == {"x": "y"}, f"IPAM options kept: {opts.attrs['IPAM']}")
    opts.remove()
    try:
        api.create_network(f"{PROJECT}_bad", options={"com.docker.network.bridge.enable_icc": "maybe"})
        check(False, "a known option's bad value is refused")
    except docker.errors.APIError as e:
        check(e.status_code == 400 and "enable_icc" in str(e), f"bad value refused: {e}")

    keep = client.networks.create(
        f"{PROJECT}_keep", ipam=IPAMConfig(pool_configs=[IPAMPool(subnet="10.51.0.0/24")]), labels=LABELS
    )
    keep.connect("c1", ipv4_address="10.51.0.20", aliases=["api"])
    client.close()
    print("all checks passed")


if __name__ == "__main__":
    main()
