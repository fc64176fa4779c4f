"""Which CA bundle S3 TLS is verified with: chosen once by S3Con (botocore's order) and
given to s3rest, the one client every request goes through (and to the boto3 client
that only reads AWS's endpoint rules, as `verify=`), so the two agree by construction
rather than by reading botocore's private state back."""
from __future__ import annotations

import shutil

import certifi
import pytest

from connections.s3.con import S3Con


@pytest.fixture
def profile_with_ca(tmp_path, monkeypatch):
    """An AWS config whose profile names a ca_bundle (and keys, so no lookup leaves the machine)."""
    ca = _pem(tmp_path / "corp-ca.pem")
    cfg = tmp_path / "config"
    cfg.write_text(f"[profile corp]\nregion = eu-west-1\nca_bundle = {ca}\n"
                   "aws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = secret\n")
    for var in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    return str(ca)


def _pem(path):
    """A readable CA bundle (s3rest loads it when it is made)."""
    shutil.copyfile(certifi.where(), path)
    return path


def _client_verify(monkeypatch) -> list:
    """The `verify` argument every boto3 client is made with (boto3's public Session.client)."""
    import boto3

    seen: list = []
    real = boto3.Session.client

    def client(self, *args, **kw):
        seen.append(kw.get("verify"))
        return real(self, *args, **kw)

    monkeypatch.setattr(boto3.Session, "client", client)
    return seen


def test_profile_ca_bundle_reaches_boto3_and_s3rest(profile_with_ca, monkeypatch):
    seen = _client_verify(monkeypatch)
    # No endpoint: botocore's endpoint rules give the layout, read through a boto3 client.
    con = S3Con("bkt", profile="corp")
    rest = con._http()
    assert seen == [profile_with_ca]
    assert rest.ca_bundle == profile_with_ca


def test_profile_ca_bundle_reaches_s3rest_without_a_boto3_client(profile_with_ca, monkeypatch):
    seen = _client_verify(monkeypatch)
    # An endpoint, region and addressing style: no boto3 client is made at all; the
    # profile's credentials and its ca_bundle come from the botocore session.
    con = S3Con("bkt", profile="corp", endpoint_url="https://s3.example.test", region="eu-west-1",
                addressing_style="path")
    assert con._http().ca_bundle == profile_with_ca and seen == []
    con.client  # a client made later verifies with the same bundle
    assert seen == [profile_with_ca]


def test_aws_ca_bundle_wins_over_requests_ca_bundle(tmp_path, monkeypatch, profile_with_ca):
    monkeypatch.setenv("AWS_CA_BUNDLE", str(_pem(tmp_path / "aws.pem")))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(_pem(tmp_path / "requests.pem")))
    seen = _client_verify(monkeypatch)
    con = S3Con("bkt", access_key_id="AKIDEXAMPLE", secret_access_key="secret", region="eu-west-1")
    assert con._http().ca_bundle == str(tmp_path / "aws.pem") and seen == [str(tmp_path / "aws.pem")]
