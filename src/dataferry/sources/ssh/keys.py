"""Client keys: loaded before connecting, so a key problem is one clear line.

asyncssh would load them inside ``connect`` and raise ``KeyImportError``,
which says neither which file nor what to do. Here: a wrong passphrase is an
AuthenticationError (exit 3); an encrypted key without a passphrase is
skipped when an agent is running (it may hold the key, as ssh would use it)
and an AuthenticationError otherwise; anything that is not a private key is a
ConfigError (exit 2). Passphrases never appear in a message.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from ..._connection import Secret
from ..._exceptions import AuthenticationError, ConfigError

log = logging.getLogger("dataferry.ssh")


@dataclass(frozen=True)
class LoadedKeys:
    """Key pairs ready for asyncssh, and the files skipped for the agent to cover."""

    keypairs: tuple[asyncssh.SSHKeyPair, ...]
    left_to_agent: tuple[Path, ...] = ()


def agent_running() -> bool:
    """An ssh-agent is reachable through SSH_AUTH_SOCK (as ssh finds it)."""
    sock = os.environ.get("SSH_AUTH_SOCK", "")
    return bool(sock) and os.path.exists(sock)


def load_client_keys(
    files: Sequence[Path],
    passphrase: Secret | None,
    certificates: Sequence[Path] = (),
    *,
    required: Sequence[Path] = (),
    what: str = "SSH_KEY_FILE",
) -> LoadedKeys:
    """Load each key file (with its ``-cert.pub`` or the given certificates).

    Files in ``required`` (SSH_KEY_FILE) must exist; others (the config's
    IdentityFile) are skipped when missing, as ssh skips them.
    """
    secret = passphrase.get_secret_value() if passphrase is not None else None
    certs: list[asyncssh.SSHCertificate] = []
    for path in certificates:
        if not path.is_file():
            log.debug("skipping CertificateFile %s: no such file", path)
            continue
        try:
            loaded_certs = asyncssh.load_certificates([str(path)])
        except (asyncssh.KeyImportError, OSError) as exc:
            raise ConfigError(f"CertificateFile {path}: not a usable certificate ({exc})") from None
        if not loaded_certs:
            raise ConfigError(f"CertificateFile {path}: not a usable certificate (none in it)")
        certs.extend(loaded_certs)
    loaded: list[asyncssh.SSHKeyPair] = []
    left: list[Path] = []
    for path in files:
        label = what if path in required else "IdentityFile"
        if not path.is_file():
            if path in required:
                raise ConfigError(f"{label}: no such file: {path}")
            log.debug("skipping IdentityFile %s: no such file", path)
            continue
        try:
            loaded.extend(asyncssh.load_keypairs([str(path)], secret, certs))
        except asyncssh.KeyEncryptionError:
            raise AuthenticationError(
                f"{label} {path}: SSH_KEY_PASSPHRASE does not decrypt this key (wrong passphrase)"
            ) from None
        except asyncssh.KeyImportError as exc:
            if "passphrase" not in str(exc).lower():
                raise ConfigError(
                    f"{label} {path}: not a private key the SSH client can use ({exc})"
                ) from None
            if agent_running():
                # ssh would use the agent's copy of this key; if the agent lacks
                # it, authentication fails and the message says what to do.
                left.append(path)
                continue
            raise AuthenticationError(
                f"{label} {path} is encrypted: set SSH_KEY_PASSPHRASE, or add the key to "
                f"ssh-agent (ssh-add {path}) and set SSH_AUTH_SOCK"
            ) from None
        except OSError as exc:
            raise ConfigError(f"{label} {path}: cannot read: {exc.strerror or exc}") from None
    return LoadedKeys(tuple(loaded), tuple(left))
