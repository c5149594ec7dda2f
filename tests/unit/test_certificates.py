"""Given certificates are checked before Apache uses them; the fallback is made once."""
from __future__ import annotations

import datetime as dt
import stat

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tenantkit.act.certificates import check_given, covers, fingerprint, make_fallback, read_certificate

UTC = dt.timezone.utc
HOSTS = ("acme.localhost", "www.acme.localhost")


@pytest.fixture(scope="module")
def pki():
    """A root, an intermediate, and a leaf it issued for the acme hosts (made once: RSA is slow)."""
    ca = trustme.CA()
    inter = ca.create_child_ca()
    leaf = inter.issue_cert(*HOSTS)
    return ca, inter, leaf


def write(path, *blobs):
    path.write_bytes(b"".join(blob if isinstance(blob, bytes) else blob.bytes() for blob in blobs))
    return path


@pytest.fixture
def given(tmp_path, pki):
    """cert.pem (leaf then intermediate), key.pem, and roots.pem holding the private root."""
    ca, _, leaf = pki
    return (write(tmp_path / "cert.pem", *leaf.cert_chain_pems),
            write(tmp_path / "key.pem", leaf.private_key_pem),
            write(tmp_path / "roots.pem", ca.cert_pem))


def test_a_complete_chain_with_its_key_passes_and_describes_the_leaf(given):
    cert, key, roots = given
    found = check_given(cert, key, HOSTS, trusted_roots=roots)
    assert found.hosts == HOSTS
    assert found.chain_length == 2
    assert "acme.localhost" not in found.issuer and found.issuer
    assert found.not_after.tzinfo is not None
    assert 0 < found.days_left() <= found.days_left(dt.datetime(1999, 1, 1, tzinfo=UTC))


def test_a_key_of_another_certificate_does_not_match(given, tmp_path, pki):
    cert, _, roots = given
    other = pki[1].issue_cert("other.localhost")
    key = write(tmp_path / "other.key", other.private_key_pem)
    with pytest.raises(ValueError, match="does not match") as error:
        check_given(cert, key, HOSTS, trusted_roots=roots)
    assert "other.key" in str(error.value) and "\n" not in str(error.value)


def test_a_leaf_without_its_intermediate_is_an_incomplete_chain(given, pki):
    cert, key, roots = given
    write(cert, pki[2].cert_chain_pems[0])
    with pytest.raises(ValueError, match="chain of .*cert.pem ends at .*append the intermediate"):
        check_given(cert, key, HOSTS, trusted_roots=roots)


def test_a_private_root_not_named_as_trusted_is_an_incomplete_chain(given):
    cert, key, _ = given
    with pytest.raises(ValueError, match="chain.*tls.trusted_roots"):
        check_given(cert, key, HOSTS)


def test_certificates_out_of_order_are_refused(given, pki):
    cert, key, roots = given
    leaf_pem, inter_pem = pki[2].cert_chain_pems
    write(cert, leaf_pem, pki[0].cert_pem, inter_pem)  # root between leaf and intermediate
    with pytest.raises(ValueError, match="certificate 1 of .* is not signed by the next one"):
        check_given(cert, key, HOSTS, trusted_roots=roots)


def test_a_chain_may_end_at_its_root_when_that_root_is_trusted(given, pki):
    cert, key, roots = given
    write(cert, *pki[2].cert_chain_pems, pki[0].cert_pem)
    assert check_given(cert, key, HOSTS, trusted_roots=roots).chain_length == 3


def test_a_chain_ending_at_an_untrusted_root_in_the_file_is_refused(given, pki):
    """A self-signed root is complete, but no client has it: browsers would refuse it."""
    cert, key, _ = given
    write(cert, *pki[2].cert_chain_pems, pki[0].cert_pem)
    with pytest.raises(ValueError, match="self-signed certificate that is not a trusted root"):
        check_given(cert, key, HOSTS)


def test_a_host_the_certificate_does_not_name_is_named(given):
    cert, key, roots = given
    with pytest.raises(ValueError, match="does not cover shop.acme.localhost; it names acme.localhost, "
                                         "www.acme.localhost"):
        check_given(cert, key, ["acme.localhost", "shop.acme.localhost"], trusted_roots=roots)


def test_a_wildcard_covers_exactly_one_label(tmp_path, pki):
    leaf = pki[1].issue_cert("*.acme.localhost")
    cert = write(tmp_path / "wild.pem", *leaf.cert_chain_pems)
    key = write(tmp_path / "wild.key", leaf.private_key_pem)
    roots = write(tmp_path / "roots.pem", pki[0].cert_pem)
    assert check_given(cert, key, ["www.acme.localhost", "SHOP.acme.localhost."], trusted_roots=roots)
    with pytest.raises(ValueError, match="does not cover a.b.acme.localhost"):
        check_given(cert, key, ["a.b.acme.localhost"], trusted_roots=roots)
    with pytest.raises(ValueError, match="does not cover acme.localhost;"):
        check_given(cert, key, ["acme.localhost"], trusted_roots=roots)
    assert not covers(["*.acme.localhost"], "xacme.localhost")


def test_a_certificate_without_subject_alt_names_covers_nothing(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "acme.localhost")])
    now = dt.datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path = write(tmp_path / "cn.pem", cert.public_bytes(serialization.Encoding.PEM))
    key_path = write(tmp_path / "cn.key", private_pem(key))
    with pytest.raises(ValueError, match="does not cover acme.localhost.*no subjectAltName"):
        check_given(cert_path, key_path, ["acme.localhost"], trusted_roots=cert_path)


def test_an_expired_certificate_says_when(given, pki):
    cert, key, roots = given
    later = dt.datetime(3001, 1, 1, tzinfo=UTC)  # trustme's certificates last 2000-3000
    expiry = pki[2].cert_chain_pems[0].bytes()
    not_after = x509.load_pem_x509_certificate(expiry).not_valid_after_utc
    with pytest.raises(ValueError, match=f"expired on {not_after:%Y-%m-%d}"):
        check_given(cert, key, HOSTS, trusted_roots=roots, now=later)


def test_a_certificate_not_yet_valid_is_refused(given):
    cert, key, roots = given
    with pytest.raises(ValueError, match="not valid before"):
        check_given(cert, key, HOSTS, trusted_roots=roots, now=dt.datetime(1999, 1, 1, tzinfo=UTC))


def test_a_missing_file_is_named(given, tmp_path):
    cert, _, roots = given
    with pytest.raises(ValueError, match="nokey.pem does not exist"):
        check_given(cert, tmp_path / "nokey.pem", HOSTS, trusted_roots=roots)
    with pytest.raises(ValueError, match="nocert.pem does not exist"):
        check_given(tmp_path / "nocert.pem", tmp_path / "nokey.pem", HOSTS)


def test_files_that_are_not_pem_get_a_clear_message(given, pki):
    cert, key, roots = given
    der = x509.load_pem_x509_certificate(pki[2].cert_chain_pems[0].bytes()).public_bytes(
        serialization.Encoding.DER)
    cert.write_bytes(der)
    with pytest.raises(ValueError, match="cert.pem is not PEM.*openssl x509 -inform der"):
        check_given(cert, key, HOSTS, trusted_roots=roots)
    write(cert, *pki[2].cert_chain_pems)
    write(key, pki[2].cert_chain_pems[0])  # a certificate where the key should be
    with pytest.raises(ValueError, match="key.pem holds no PEM private key"):
        check_given(cert, key, HOSTS, trusted_roots=roots)


def test_an_encrypted_key_is_refused_with_the_command_that_decrypts_it(given, pki):
    cert, key, roots = given
    private = serialization.load_pem_private_key(pki[2].private_key_pem.bytes(), password=None)
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(ValueError, match="encrypted; Apache cannot ask for its passphrase.*openssl pkey"):
        check_given(cert, key, HOSTS, trusted_roots=roots)


def test_read_certificate_gives_the_expiry_or_none(given, tmp_path, pki):
    cert, _, _ = given
    expected = x509.load_pem_x509_certificate(pki[2].cert_chain_pems[0].bytes()).not_valid_after_utc
    found = read_certificate(cert)
    assert found is not None and found.not_after == expected and found.chain_length == 2
    assert read_certificate(write(tmp_path / "garbage.pem", b"not a certificate\x00\xff")) is None
    assert read_certificate(tmp_path / "missing.pem") is None


def test_the_fallback_is_private_self_signed_and_made_once(tmp_path):
    cert_path, key_path = tmp_path / "tls" / "fallback.crt", tmp_path / "tls" / "fallback.key"
    make_fallback(cert_path, key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert stat.S_IMODE(cert_path.parent.stat().st_mode) == 0o700
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert.verify_directly_issued_by(cert)  # self-signed: raises otherwise
    assert cert.not_valid_after_utc - cert.not_valid_before_utc >= dt.timedelta(days=3650)
    found = check_given(cert_path, key_path, ["unknown-host.invalid"],  # its key matches, it names the host
                        trusted_roots=cert_path)
    assert found.hosts == ("unknown-host.invalid",)
    before = fingerprint(cert_path), fingerprint(key_path)
    assert all(before)
    make_fallback(cert_path, key_path)
    assert (fingerprint(cert_path), fingerprint(key_path)) == before
    assert not [p for p in cert_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_the_fallback_is_made_anew_when_a_file_is_missing(tmp_path):
    cert_path, key_path = tmp_path / "fallback.crt", tmp_path / "fallback.key"
    make_fallback(cert_path, key_path)
    old_key = fingerprint(key_path)
    cert_path.unlink()
    make_fallback(cert_path, key_path)
    assert fingerprint(key_path) not in ("", old_key)
    assert check_given(cert_path, key_path, [], trusted_roots=cert_path)


def test_the_fingerprint_changes_with_the_file(tmp_path):
    path = tmp_path / "cert.pem"
    assert fingerprint(path) == ""
    path.write_bytes(b"one")
    first = fingerprint(path)
    path.write_bytes(b"two")
    assert first and fingerprint(path) and fingerprint(path) != first


def private_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
