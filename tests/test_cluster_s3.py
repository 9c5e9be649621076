"""A run sharded across a real Dask cluster into ``s3://``: the destination every worker
reaches. A `dask scheduler` and two `dask worker` processes on loopback
(tests/support/dask.py), the real OpenSSH sshd and SeaweedFS.

The workers get the S3 credentials from their own environment (here: started
by the fixture after ``s3_env`` set it), as a deployment gives them (a
Kubernetes secret, say); nothing of them travels in a Dask task.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from tests.support.dask import DaskCluster
from tests.support.remote import Remote, random_bytes, run_cli, sshd_connection
from tests.support.s3 import ADMIN, SeaweedS3, keys, make_bucket, objects, uploads
from tests.support.sshd import OpenSSHServer, free_port


def _remote(server: OpenSSHServer, tmp_path: Path) -> Remote:
    root = tmp_path / "remote"
    root.mkdir()
    return Remote("openssh", root, sshd_connection(server, tmp_path / "known_hosts"), None)


def _dataset(root: Path) -> Path:
    folder = root / "data"
    folder.mkdir()
    for k in range(12):
        (folder / f"part-{k:02d}.csv").write_bytes(random_bytes(20_000 + 9_000 * k, k))
    # Several parts: a multipart upload made on a worker.
    (folder / "big.bin").write_bytes(random_bytes(20 << 20, 50))
    with zipfile.ZipFile(folder / "bundle.zip", "w") as archive:
        for k in range(3):
            archive.writestr(f"inner/{k}.csv", random_bytes(50_000, 100 + k))
    return folder


def _run(
    folder: Path, save: str, cwd: Path, env: dict[str, str], *extra: str
) -> tuple[int, str, str]:
    args = ["-m", "dataferry", "run", "t", "--file_save_path", save,
            "--remote_file_path", str(folder), "--include", "*", *extra]  # fmt: skip
    result = run_cli(args, env, cwd)
    return result.returncode, result.stdout, result.stderr


def _entries(manifest: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    task = json.loads(manifest.read_text())["tasks"]["t"]
    return sorted(
        (entry["source"]["path"], sorted((r["path"], r["sha256"]) for r in entry["results"]))
        for entry in task["files"]
    )


def test_cluster_run_into_s3_is_identical_to_a_single_process_run(
    sshd_server: OpenSSHServer, s3_env: SeaweedS3, dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    remote = _remote(sshd_server, tmp_path)
    folder = _dataset(remote.root)
    bucket = make_bucket(s3_env, f"cluster-{free_port()}")
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    single.mkdir()
    sharded.mkdir()
    base = {**remote.env(), **s3_env.environment()}

    code, _, err = _run(
        folder, f"s3://{bucket}/single/", single, {**base, "DATAFERRY_MANIFEST": str(single / "m")}
    )
    assert code == 0, err
    env_sharded = {**base, "DATAFERRY_MANIFEST": str(sharded / "m")}
    cluster_args = ("--scheduler", dask_cluster.address, "--log-level", "DEBUG")
    code, out, err = _run(folder, f"s3://{bucket}/sharded/", sharded, env_sharded, *cluster_args)
    assert code == 0, err
    assert "shard 1/" in err
    assert "shard 2/" in err  # more than one shard: both workers took part
    done_on = {
        line.split(" done on ")[1].split(":")[1] for line in err.splitlines() if " done on " in line
    }
    assert len(done_on) == 2, err  # two worker processes wrote into the bucket

    found = objects(s3_env, bucket)
    by_run = {
        prefix: {key[len(prefix) :]: data for key, data in found.items() if key.startswith(prefix)}
        for prefix in ("single/", "sharded/")
    }
    assert by_run["sharded/"] == by_run["single/"]
    assert "inner/0.csv" in by_run["sharded/"]  # the archive was extracted (whole, once)
    assert by_run["sharded/"]["big.bin"] == (folder / "big.bin").read_bytes()
    assert uploads(s3_env, bucket) == []  # every multipart upload completed
    # The coordinator merged each shard's entries once: the same as one process wrote.
    entries = _entries(sharded / "m")
    assert entries == _entries(single / "m")
    assert len({source for source, _ in entries}) == len(entries)

    # The secret key reaches no Dask log, no output and no manifest.
    secret = ADMIN[1]
    for text in (dask_cluster.logs(), out, err, (sharded / "m").read_text()):
        assert secret not in text

    # A second cluster run finds every object up to date and fetches nothing.
    code, out, err = _run(
        folder, f"s3://{bucket}/sharded/", sharded, env_sharded, "--scheduler", dask_cluster.address
    )
    assert code == 0, err
    assert "already up to date" in out
    assert "0 B transferred" in out


def test_workers_without_s3_credentials_is_one_line(
    sshd_server: OpenSSHServer, dask_cluster: DaskCluster, s3_env: SeaweedS3, tmp_path: Path
) -> None:
    """The workers started before the S3 variables were set (dask_cluster first):
    the coordinator reaches the bucket, the workers cannot. One line, exit 3."""
    remote = _remote(sshd_server, tmp_path)
    folder = remote.root / "d"
    folder.mkdir()
    (folder / "a.csv").write_bytes(b"a\n")
    bucket = make_bucket(s3_env, f"nocred-{free_port()}")
    env = {**remote.env(), **s3_env.environment()}
    code, _, err = _run(
        folder, f"s3://{bucket}/x/", tmp_path, env, "--scheduler", dask_cluster.address
    )
    assert code == 3, err
    assert err.count("dataferry: error:") == 1 and "Traceback" not in err
    assert "no S3 credentials found" in err and "Dask worker's environment" in err
    assert keys(s3_env, bucket) == []
