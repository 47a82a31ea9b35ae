"""Where an API key may come from, and how it is compared."""

import io
import json
import logging

from pipeline.server.auth import credentials_from_request, is_authorized, is_trusted
from pipeline.server.logs import CallLogger, configure_logging, redact_number


def test_key_from_query_bearer_and_x_api_key():
    headers = [(b"Authorization", b"Bearer abc"), (b"X-Api-Key", b" def ")]
    assert credentials_from_request("/media?token=xyz&other=1", headers) == ["xyz", "abc", "def"]


def test_other_authorization_schemes_are_not_keys():
    assert credentials_from_request("/", [(b"authorization", b"Basic Zm9vOmJhcg==")]) == []


def test_no_key_configured_lets_everyone_in():
    assert is_authorized(None, [])


def test_key_must_match_exactly():
    assert is_authorized("s3cret", ["s3cret"])
    assert not is_authorized("s3cret", [])
    assert not is_authorized("s3cret", ["s3cre", "s3cret ", "S3CRET"])


def test_a_request_offering_several_keys_is_refused_even_if_one_matches():
    assert not is_authorized("s3cret", ["nope", "s3cret"])
    assert not is_authorized("s3cret", ["s3cret", "s3cret"])
    offered = credentials_from_request("/?token=s3cret&token=a&token=b", [])
    assert not is_authorized("s3cret", offered)


def test_without_a_key_only_this_host_is_trusted():
    assert is_trusted(None, [], "127.0.0.1")
    assert is_trusted(None, [], "::1")
    assert is_trusted(None, [], "::ffff:127.0.0.1")
    assert is_trusted(None, [], None)  # an in-process stream
    assert not is_trusted(None, [], "10.1.2.3")
    assert not is_trusted(None, [], "not an address")
    assert is_trusted("k", ["k"], "10.1.2.3")
    assert not is_trusted("k", [], "127.0.0.1")  # with a key, the key decides


def test_redaction_keeps_only_the_last_two_digits():
    assert redact_number("9876543210") == "********10"
    assert redact_number("+91 98765 43210") == "**********10"


def test_every_call_log_line_is_json_with_the_call_id():
    stream = io.StringIO()
    configure_logging("info", stream)
    log = CallLogger(logging.getLogger("voicegraph.test"), "call-7", mobileNo="********10")
    log.info("utterance", extra={"seconds": 1.5})
    record = json.loads(stream.getvalue())
    assert record["callId"] == "call-7"
    assert record["mobileNo"] == "********10"
    assert record["seconds"] == 1.5
    assert record["message"] == "utterance"
