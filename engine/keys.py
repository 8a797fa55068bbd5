"""CURVE keys of the engine service: where they live, how they are made and checked.

Layout of a key directory made by ``melodyd engine --make-keys DIR``::

    DIR/server.key          server public key   (give it to every bridge)
    DIR/server.key_secret   server secret key   (stays on the engine machine)
    DIR/client.key_secret   a client key pair   (give it to one bridge)
    DIR/client.key
    DIR/authorized_clients/client.key   public keys the engine accepts (add more here)

The key files are zmq's (czmq) text certificates, never pickle.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq.auth

from models.core.exceptions import EngineError

logger = logging.getLogger(__name__)

SERVER_NAME = "server"
CLIENT_NAME = "client"
AUTHORIZED_DIR = "authorized_clients"


@dataclass(frozen=True)
class CurveKeys:
    """What the engine needs to serve with CURVE.

    Attributes:
        server_secret: the server's secret certificate (``*.key_secret``).
        clients_dir: a directory of authorized client public certificates (``*.key``).
    """

    server_secret: Path
    clients_dir: Path

    @classmethod
    def from_dir(cls, directory: str | Path) -> CurveKeys:
        """The keys of a directory laid out by ``make_keys``."""
        directory = Path(directory)
        return cls(directory / f"{SERVER_NAME}.key_secret", directory / AUTHORIZED_DIR)

    def load(self) -> tuple[bytes, bytes]:
        """The server's (public, secret) key pair, after checking the clients directory.

        Raises:
            EngineError: a file is missing, holds no secret key, or no client is authorized.
        """
        if not self.server_secret.is_file():
            raise EngineError(f"CURVE server secret key not found: {self.server_secret} "
                              "(make one with `melodyd engine --make-keys DIR`)")
        try:
            public, secret = zmq.auth.load_certificate(self.server_secret)
        except (OSError, ValueError) as err:
            raise EngineError(f"cannot read CURVE key {self.server_secret}: {err}") from err
        if not secret:
            raise EngineError(f"{self.server_secret} holds no secret key "
                              "(give the *.key_secret file, not the public *.key)")
        if not self.clients_dir.is_dir():
            raise EngineError(f"CURVE client key directory not found: {self.clients_dir}")
        if not any(self.clients_dir.glob("*.key")):
            # A server nobody may connect to is a configuration mistake, not a secure default.
            raise EngineError(f"no authorized client keys (*.key) in {self.clients_dir}")
        return public, secret


def make_keys(directory: str | Path) -> dict[str, Path]:
    """Write a server key pair and one client key pair, and authorize that client.

    Secret files are made readable by their owner only.

    Raises:
        EngineError: the directory already holds keys (never overwrite a deployed key).
    """
    directory = Path(directory)
    server_secret = directory / f"{SERVER_NAME}.key_secret"
    if server_secret.exists():
        raise EngineError(f"{directory} already holds keys; choose an empty directory")
    authorized = directory / AUTHORIZED_DIR
    authorized.mkdir(parents=True, exist_ok=True)
    server_public, server_secret_path = zmq.auth.create_certificates(directory, SERVER_NAME)
    client_public, client_secret = zmq.auth.create_certificates(directory, CLIENT_NAME)
    for secret in (server_secret_path, client_secret):
        os.chmod(secret, 0o600)
    shutil.copy(client_public, authorized / Path(client_public).name)
    return {"server_public": Path(server_public), "server_secret": Path(server_secret_path),
            "client_public": Path(client_public), "client_secret": Path(client_secret),
            "authorized_clients": authorized}


def is_local_endpoint(endpoint: str) -> bool:
    """Whether a zmq endpoint is reachable from this machine only.

    ``ipc://`` and ``inproc://`` are local; ``tcp://`` is local when its host is a
    loopback address or ``localhost``. Anything else (a real interface, ``*``, a
    hostname) counts as open to the network.
    """
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp" or not rest:
        return False
    try:
        host = urlsplit(f"//{rest}").hostname
    except ValueError:
        return False
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def choose_security(bind: str, keys: CurveKeys | None, *, insecure: bool = False,
                    force_curve: bool = False) -> CurveKeys | None:
    """Decide whether the service runs with CURVE: the keys to use, or ``None`` for none.

    Configured keys are always used. Without keys, a loopback address serves in the clear;
    any other address refuses to start unless ``insecure`` is given explicitly.

    Raises:
        EngineError: CURVE is required (non-local address, or ``force_curve``) and no keys
            are configured.
    """
    if keys is not None:
        return keys
    if force_curve:
        raise EngineError("--curve needs keys: pass --curve-keys DIR or set [engine] "
                          "curve_server_secret and curve_clients_dir")
    if is_local_endpoint(bind):
        return None
    if insecure:
        logger.warning("serving %s WITHOUT authentication or encryption (--insecure): "
                       "anyone who can reach it can use the engine", bind)
        return None
    raise EngineError(f"binding {bind} exposes the engine beyond this machine and needs CURVE "
                      "keys (--curve-keys DIR, made with `melodyd engine --make-keys DIR`, or "
                      "[engine] curve_server_secret / curve_clients_dir); pass --insecure to "
                      "serve without them on a trusted network")
