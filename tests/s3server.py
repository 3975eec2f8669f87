"""A moto S3 server for tests: in a thread on 127.0.0.1, with real IAM checks on demand.

moto accepts any credentials until IAM authentication is switched on (``/moto-api/reset-auth``);
then it verifies SigV4 signatures and IAM policies like AWS, so bad keys and denied
access are tested against a server, not a mock of boto3.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
from moto.server import ThreadedMotoServer

#: Any credentials do while IAM checks are off; these are what the tests use then.
ANY_KEY, ANY_SECRET = "testing-access-key", "testing-secret-key"
ALLOW_ALL_S3 = {"Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


class MotoS3:
    """One running moto server and helpers to create IAM users and switch checks on."""

    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def stop(self) -> None:
        """Shut the server down."""
        self._server.stop()

    def client(self, service: str = "s3"):
        """A boto3 client for this server with throwaway credentials."""
        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=ANY_KEY, aws_secret_access_key=ANY_SECRET)

    def user(self, name: str, policy: dict | None = None) -> tuple[str, str]:
        """Create IAM user ``name`` with an inline ``policy``; return its (key id, secret)."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        if policy:
            iam.put_user_policy(UserName=name, PolicyName="inline",
                                PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def _set_auth(self, after_requests: str) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", method="POST",
                                         data=after_requests.encode(),
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=5).close()

    @contextmanager
    def iam_checks(self) -> Iterator[None]:
        """Within this block the server checks signatures and IAM policies like AWS."""
        self._set_auth("0")
        try:
            yield
        finally:
            self._set_auth("inf")


@contextmanager
def running_moto() -> Iterator[MotoS3]:
    """A moto S3 server for the duration of the block (wrap it in a session fixture)."""
    server = MotoS3()
    try:
        yield server
    finally:
        server.stop()
