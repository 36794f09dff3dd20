"""Signed links: the old server's scheme, its validity window and single use."""

from __future__ import annotations

import pytest

from asr_actors.signing import LinkRefused, ReplayCache, Window, sign, signed_query, string_to_sign, verify

# Computed independently with:
#   printf 'host: 127.0.0.1:8000\ndate: 1700000000\nappkey: demo\nGET /v1/asr' \
#     | openssl dgst -sha256 -hmac 's3cret' -binary | base64
KNOWN_SIGNATURE = "lGgcfqnZuPsFb2K3SdnIT//Q2bSVWfEUkAiAQHC89po="
KNOWN_NONCE_SIGNATURE = "WjOFbAtTVditxtUTqRmu9SUg9DiGrw5TAVjc0zqUJ3I="
HOST, DATE, APPKEY, PATH, SECRET = "127.0.0.1:8000", "1700000000", "demo", "/v1/asr", "s3cret"


def test_string_to_sign_is_the_field_notes_layout() -> None:
    """The signed string is exactly the four lines of docs/protocol.md, a fifth only with a nonce."""
    assert string_to_sign(HOST, DATE, APPKEY, PATH) == (
        "host: 127.0.0.1:8000\ndate: 1700000000\nappkey: demo\nGET /v1/asr"
    )
    assert string_to_sign(HOST, DATE, APPKEY, PATH, "abc").endswith("GET /v1/asr\nnonce: abc")


def test_known_answer() -> None:
    """sign() matches the openssl-computed HMAC for the example string, with and without a nonce."""
    assert KNOWN_SIGNATURE == sign(SECRET, HOST, DATE, APPKEY, PATH)
    assert KNOWN_NONCE_SIGNATURE == sign(SECRET, HOST, DATE, APPKEY, PATH, nonce="abc")


def test_verify_accepts_a_space_where_plus_was() -> None:
    """Old clients do not URL-encode the signature: its '+' arrives as a space and must still verify."""
    date = next(
        str(d) for d in range(1700000000, 1700001000) if "+" in sign(SECRET, HOST, str(d), APPKEY, PATH)
    )
    signature = sign(SECRET, HOST, date, APPKEY, PATH)
    verify(SECRET, HOST, date, APPKEY, PATH, signature.replace("+", " "))


@pytest.mark.parametrize(
    ("field", "value"),
    [("host", "evil.example:8000"), ("path", "/v1/other"), ("appkey", "other"), ("date", "1700000001")],
)
def test_verify_refuses_any_changed_field(field: str, value: str) -> None:
    """A signature is bound to host, path, appkey and date: changing any one refuses the link."""
    fields = {"host": HOST, "date": DATE, "appkey": APPKEY, "path": PATH} | {field: value}
    with pytest.raises(LinkRefused, match="does not match"):
        verify(SECRET, fields["host"], fields["date"], fields["appkey"], fields["path"], KNOWN_SIGNATURE)


def test_verify_refuses_forgery_and_dropped_nonce() -> None:
    """A wrong secret, a tampered signature or a nonce stripped from a nonce link are all refused."""
    with pytest.raises(LinkRefused):
        verify("wrong", HOST, DATE, APPKEY, PATH, KNOWN_SIGNATURE)
    with pytest.raises(LinkRefused):
        verify(SECRET, HOST, DATE, APPKEY, PATH, "A" + KNOWN_SIGNATURE[1:])
    with pytest.raises(LinkRefused):
        verify(SECRET, HOST, DATE, APPKEY, PATH, KNOWN_NONCE_SIGNATURE)


def test_window_bounds() -> None:
    """Valid from date-skew to date+survival+skew; future dates only within the skew."""
    window = Window(survival_time=120, clock_skew=5)
    date = 1_000_000
    assert date + 125 == window.check(str(date), now=date + 125)
    window.check(str(date), now=date - 5)
    with pytest.raises(LinkRefused, match="expired"):
        window.check(str(date), now=date + 125.5)
    with pytest.raises(LinkRefused, match="future"):
        window.check(str(date), now=date - 6)
    with pytest.raises(LinkRefused, match="future"):
        window.check(str(date + 10**9), now=date)
    with pytest.raises(LinkRefused, match="unix time"):
        window.check("yesterday", now=date)


def test_replay_cache_refuses_second_use_and_forgets_expired() -> None:
    """A signature is single-use while valid; entries are dropped once their link has expired."""
    cache = ReplayCache()
    cache.claim("sig+1", expires_at=100, now=0)
    with pytest.raises(LinkRefused, match="already used"):
        cache.claim("sig 1", expires_at=100, now=50)
    cache.claim("sig2", expires_at=300, now=101)
    assert 1 == len(cache)


def test_replay_cache_forgets_by_expiry_whatever_the_order_of_claims() -> None:
    """Links of different lifetimes: each entry goes when its own link expires, not in claim order."""
    cache = ReplayCache()
    for signature, expires_at in [("late", 500), ("early", 100), ("middle", 300)]:
        cache.claim(signature, expires_at=expires_at, now=0)
    cache.claim("probe1", expires_at=1000, now=200)
    assert 3 == len(cache)  # early forgotten
    with pytest.raises(LinkRefused, match="already used"):
        cache.claim("middle", expires_at=300, now=250)
    cache.claim("probe2", expires_at=1000, now=400)
    assert 3 == len(cache)  # middle forgotten: late, probe1, probe2
    cache.claim("middle", expires_at=900, now=400)  # an expired link's signature is the window's to refuse


def test_signed_query_survives_url_encoding() -> None:
    """signed_query URL-encodes the signature so '+' and '/' arrive intact."""
    query = signed_query(SECRET, HOST, APPKEY, PATH, now=1700000000.7)
    assert "date=1700000000" in query
    assert "signature=lGgcfqnZuPsFb2K3SdnIT%2F%2FQ2bSVWfEUkAiAQHC89po%3D" in query
