"""Where Redis is: one URL names a single server, a Cluster or a Sentinel set.

Every part of rqsup takes one URL string, so the kind of deployment is chosen
in one place and carried through config, producers, workers and the CLI:

- ``redis://host:port/db``, ``rediss://`` (TLS), ``unix:///path.sock``;
- ``redis+cluster://[user:pass@]host:port,host:port`` (``rediss+cluster`` for
  TLS): seed nodes of a Redis Cluster, any few of them (the client learns the
  rest). A Cluster has only database 0;
- ``redis+sentinel://[user:pass@]host:port,host:port/<master>[/<db>]``
  (``rediss+sentinel`` for TLS to the data nodes): the sentinels, the name
  they monitor the primary under, and the database. The user and password
  are the data nodes'; ``?sentinel_password=`` (and ``sentinel_username``)
  authenticate to the sentinels when they need it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

SINGLE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SCHEMES = SINGLE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES
_SENTINEL_QUERY = ("sentinel_password", "sentinel_username")


class EndpointError(ValueError):
    """A Redis URL that cannot be used; the message says which part is wrong."""


@dataclass(frozen=True)
class Endpoint:
    """A parsed URL: ``kind`` is "single", "cluster" or "sentinel"."""

    kind: str
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    master: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_auth: dict[str, str] = field(default_factory=dict)


def _hostport(text: str, url_kind: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise EndpointError(f"{url_kind} node {text!r} must be host:port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise EndpointError(f"{url_kind} node {text!r} has a port that is not a number "
                            "from 1 to 65535")
    return host.strip("[]"), int(port)


def parse(url: str) -> Endpoint:
    """Check a URL and split it into what a client needs (no I/O)."""
    if not isinstance(url, str) or not url:
        raise EndpointError("must be a URL such as redis://127.0.0.1:6379/0")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise EndpointError("must start with redis://, rediss:// (TLS), unix://, "
                            "redis+cluster:// or redis+sentinel:// (rediss+... for TLS)")
    if scheme in SINGLE_SCHEMES:
        return Endpoint("single", url)
    kind = "cluster" if scheme in CLUSTER_SCHEMES else "sentinel"
    rest, _, query = rest.partition("?")
    userinfo, at, hosts_path = rest.rpartition("@")
    if not at:
        hosts_path = rest
    hosts, _, path = hosts_path.partition("/")
    nodes = tuple(_hostport(h, kind) for h in hosts.split(",") if h)
    if not nodes:
        raise EndpointError(f"a {scheme}:// URL needs at least one host:port")
    username = password = None
    if userinfo:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    parts = [p for p in path.split("/") if p]
    tls = scheme.startswith("rediss")
    if kind == "cluster":
        if params:
            raise EndpointError(f"redis+cluster URL: unknown option(s) {sorted(params)}")
        if parts not in ([], ["0"]):
            raise EndpointError("a Redis Cluster has only database 0: drop "
                                f"'/{'/'.join(parts)}' from the URL")
        return Endpoint("cluster", url, nodes, username=username, password=password, tls=tls)
    unknown = sorted(set(params) - set(_SENTINEL_QUERY))
    if unknown:
        raise EndpointError(f"redis+sentinel URL: unknown option(s) {unknown}; "
                            f"known: {list(_SENTINEL_QUERY)}")
    if not parts or len(parts) > 2:
        raise EndpointError("a redis+sentinel URL names the primary after the hosts: "
                            "redis+sentinel://host:port,host:port/<master>/<db>")
    db = parts[1] if len(parts) == 2 else "0"
    if not db.isdigit():
        raise EndpointError(f"database must be a number, got {db!r}")
    return Endpoint("sentinel", url, nodes, master=unquote(parts[0]), db=int(db),
                    username=username, password=password, tls=tls,
                    sentinel_auth={k[len("sentinel_"):]: v for k, v in params.items()})


def is_tls(url: str) -> bool:
    return url.startswith("rediss")


def from_parts(kind: str, nodes: list[str], *, master: str | None = None, db: int = 0,
               tls: bool = False) -> str:
    """The URL for a config's ``cluster_nodes = [...]`` or ``sentinels = [...]``
    plus ``master =`` (credentials come from the URL's user info, so a
    config with them uses the URL form)."""
    for n in nodes:
        _hostport(n, kind)
    scheme = ("rediss+" if tls else "redis+") + kind
    url = f"{scheme}://{','.join(nodes)}"
    if kind == "sentinel":
        if not master:
            raise EndpointError("sentinels = [...] needs master = '<name the sentinels "
                                "monitor the primary under>'")
        url += f"/{master}/{db}"
    return url
