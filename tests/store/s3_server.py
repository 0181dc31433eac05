"""A real S3-compatible server for the tests: moto's standalone server on 127.0.0.1 and a free port,
in this process (a thread), plus boto3 helpers to look at and damage what the daemons wrote."""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass

_BUCKETS = itertools.count()

# Fake credentials: moto accepts any; the standard variables are how the daemon and obstore find them.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "acre-test", "AWS_SECRET_ACCESS_KEY": "acre-test", "AWS_REGION": "us-east-1"}


@dataclass
class S3Server:
    endpoint: str
    _server: object

    @classmethod
    def start(cls) -> "S3Server":
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        return cls(f"http://{host}:{port}", server)

    def env(self) -> dict[str, str]:
        """What a daemon needs in its environment to reach this server."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=CREDENTIALS["AWS_REGION"],
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def new_bucket(self) -> "Bucket":
        name = f"acre-test-{os.getpid()}-{next(_BUCKETS)}"
        self.client().create_bucket(Bucket=name)
        return Bucket(self, name, "kv")

    def stop(self) -> None:
        self._server.stop()


@dataclass
class Bucket:
    server: S3Server
    name: str
    prefix: str

    @property
    def url(self) -> str:
        return f"s3://{self.name}/{self.prefix}"

    def keys(self, under: str = "") -> list[str]:
        """Every key under PREFIX/under, relative to PREFIX."""
        c = self.server.client()
        out, token = [], None
        while True:
            kw = {"ContinuationToken": token} if token else {}
            r = c.list_objects_v2(Bucket=self.name, Prefix=f"{self.prefix}/{under}", **kw)
            out += [o["Key"][len(self.prefix) + 1:] for o in r.get("Contents", [])]
            if not r.get("IsTruncated"):
                return sorted(out)
            token = r["NextContinuationToken"]

    def get(self, key: str) -> bytes:
        return self.server.client().get_object(Bucket=self.name, Key=f"{self.prefix}/{key}")["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.server.client().put_object(Bucket=self.name, Key=f"{self.prefix}/{key}", Body=data)


def local_docs(client, want: int, timeout: float = 10.0) -> int:
    """The daemon's count of documents on its local disk, once it reaches `want` (a document read through
    is served from RAM at once and committed to disk in the background) or the timeout passes."""
    deadline = time.monotonic() + timeout
    while (n := client.stats().n_docs) != want and time.monotonic() < deadline:
        time.sleep(0.02)
    return n
