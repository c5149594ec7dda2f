"""TLS certificates: check the ones an operator gives, read expiry dates, make the fallback.

A tenant may bring its own certificate (tenant.yaml `tls: {cert: FILE, key: FILE}`).
Apache's mod_ssl refuses to start on a key that does not match, and browsers reject a
chain without its intermediates or a host the certificate does not name; both would take
every tenant's HTTPS down or fail only for some visitors. So check_given finds these
before the proxy reloads, and says in one line what to fix.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ..model import display_path
from .files import atomic_write

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
KEY_MODE = 0o600
CERT_MODE = 0o644
FALLBACK_DAYS = 3650
SUPPORTED_KEYS = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class Certificate:
    """What tenantkit shows and checks of a certificate: the leaf of a chain file."""
    subject: str
    issuer: str
    hosts: tuple[str, ...]  # its subjectAltName DNS names
    not_after: dt.datetime  # timezone-aware, UTC
    chain_length: int  # certificates in the file, the leaf included

    def days_left(self, now: dt.datetime | None = None) -> int:
        """Whole days until expiry; negative once expired."""
        return (self.not_after - _utc_now(now)).days


def check_given(cert_path: Path, key_path: Path, hosts: Iterable[str],
                trusted_roots: Path | None = None, now: dt.datetime | None = None) -> Certificate:
    """Check a given certificate chain and key before Apache uses them; ValueError (one line) if unfit."""
    return check_pair(cert_path, key_path, _read(cert_path), _read(key_path), hosts, trusted_roots, now)


def read_given(cert_path: Path, key_path: Path) -> tuple[bytes, bytes]:
    """A given certificate's and key's bytes, read once: what is checked is what is installed.
    ValueError (one line) when one cannot be read."""
    return _read(cert_path), _read(key_path)


def check_pair(cert_path: Path, key_path: Path, cert_data: bytes, key_data: bytes, hosts: Iterable[str],
               trusted_roots: Path | None = None, now: dt.datetime | None = None) -> Certificate:
    """check_given on bytes already read from these paths (which its messages name)."""
    now = _utc_now(now)
    chain = _load_chain(cert_path, cert_data)
    key = _load_key(key_path, key_data)
    leaf = chain[0]
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise ValueError(f"the key {display_path(key_path)} does not match the certificate "
                         f"{display_path(cert_path)}: give the key the certificate was issued for")
    _check_dates(cert_path, leaf, now)
    _check_chain(cert_path, chain, _trust_store(trusted_roots))
    _check_hosts(leaf, hosts)
    return _describe(leaf, len(chain))


def read_certificate(path: Path) -> Certificate | None:
    """The first certificate of a PEM file, for `tenant status`; None when missing or unreadable."""
    try:
        chain = x509.load_pem_x509_certificates(path.read_bytes())
        return _describe(chain[0], len(chain))
    except Exception:  # noqa: BLE001 - a status line must never fail on a bad file
        return None


def make_fallback(cert_path: Path, key_path: Path, name: str = "unknown-host.invalid") -> None:
    """A self-signed certificate for the catch-all HTTPS vhost (it answers 421 to unknown hosts).

    No client is meant to trust it: it only lets mod_ssl finish a handshake for a host name
    no tenant has. Kept once made, so the fingerprint and Apache's config stay still.
    """
    if cert_path.exists() and key_path.exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)  # tolerate a client's slow clock
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=FALLBACK_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    for path in (key_path, cert_path):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The key first: a crash between the two leaves no cert, so the next run makes both anew.
    atomic_write(key_path, key_pem.decode("ascii"), mode=KEY_MODE)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), mode=CERT_MODE)


def fingerprint(path: Path) -> str:
    """sha256 of a file's bytes ("" when missing), to notice a replaced certificate or key."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def covers(names: Iterable[str], host: str) -> bool:
    """Whether subjectAltName DNS names cover a host; "*" stands for exactly one label (RFC 6125)."""
    host = _normal_host(host)
    for name in names:
        name = name.lower().rstrip(".")
        if name == host:
            return True
        if name.startswith("*.") and "." in host:
            label, rest = host.split(".", 1)
            if label and rest == name[2:]:
                return True
    return False


# -- the checks, in check_given's order ---------------------------------------------------

def _read(path: Path, named_in: str = "tls of tenant.yaml") -> bytes:
    where = display_path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{where} does not exist: check the path in {named_in}") from None
    except IsADirectoryError:
        raise ValueError(f"{where} is a folder: name the PEM file in it") from None
    except PermissionError:
        raise ValueError(f"{where} cannot be read by this user: make it readable "
                         "(chmod or chown) to the user running tenant") from None
    except OSError as exc:
        raise ValueError(f"{where} cannot be read ({exc.strerror}): check the file") from None


def _load_chain(path: Path, data: bytes) -> list[x509.Certificate]:
    where = display_path(path)
    if b"-----BEGIN" not in data:
        raise ValueError(f"{where} is not PEM (no -----BEGIN line): if it is DER, convert it with "
                         f"`openssl x509 -inform der -in {where} -out {where}.pem`")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError(f"{where} holds no certificate (no -----BEGIN CERTIFICATE----- block): "
                         "are cert and key swapped in tenant.yaml?")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{where} holds a damaged certificate block: copy the certificate again "
                         "from its issuer") from None


def _load_key(path: Path, data: bytes) -> PrivateKey:
    where = display_path(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # what cryptography raises for a key that needs a password
        raise ValueError(f"{where} is encrypted; Apache cannot ask for its passphrase: decrypt it with "
                         f"`openssl pkey -in {where} -out {where}.plain`") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{where} holds no PEM private key (-----BEGIN PRIVATE KEY-----): are cert "
                         "and key swapped in tenant.yaml?") from None
    if not isinstance(key, SUPPORTED_KEYS):
        raise ValueError(f"{where} holds a {type(key).__name__.removesuffix('PrivateKey')} key, "
                         "which tenantkit does not accept: use an RSA, EC or Ed25519 key")
    return key


def _check_dates(path: Path, leaf: x509.Certificate, now: dt.datetime) -> None:
    where = display_path(path)
    not_before, not_after = _valid_from(leaf), _valid_until(leaf)
    if not_after < now:
        raise ValueError(f"{where} expired on {not_after:%Y-%m-%d}: renew it with its issuer")
    if not_before > now:
        raise ValueError(f"{where} is not valid before {not_before:%Y-%m-%d %H:%M} UTC: wait until "
                         "then, or check this host's clock")


def _check_chain(path: Path, chain: list[x509.Certificate], roots: tuple[x509.Certificate, ...]) -> None:
    """Each certificate signed by the next; the last a root or issued by a trusted one."""
    where = display_path(path)
    for position, (cert, issuer) in enumerate(zip(chain, chain[1:]), start=1):
        if not _issued_by(cert, issuer):
            raise ValueError(f"certificate {position} of {where} ({_cn(cert.subject)}) is not signed by "
                             f"the next one ({_cn(issuer.subject)}): order {where} leaf first, then "
                             "each certificate's issuer")
    last = chain[-1]
    if last.issuer == last.subject and _issued_by(last, last):
        # A root in the file: clients trust it only when they already have it.
        if any(root.public_bytes(serialization.Encoding.DER) == last.public_bytes(serialization.Encoding.DER)
               for root in roots):
            return
        raise ValueError(f"the chain of {where} ends at {_cn(last.subject)}, a self-signed certificate that is "
                         "not a trusted root, so clients would refuse it: use a certificate from a public CA, "
                         "or name your private CA in tls.trusted_roots of tenantkit.yaml")
    if any(root.subject == last.issuer and _issued_by(last, root) for root in roots):
        return
    raise ValueError(f"the chain of {where} ends at {_cn(last.subject)}, whose issuer "
                     f"{_cn(last.issuer)} is not in the file nor a trusted root: append the intermediate "
                     f"certificates to {where} (leaf first), or name your private CA in "
                     "tls.trusted_roots of tenantkit.yaml")


def _check_hosts(leaf: x509.Certificate, hosts: Iterable[str]) -> None:
    names = _dns_names(leaf)
    for host in hosts:
        if covers(names, host):
            continue
        has = ", ".join(names) if names else "no subjectAltName DNS names (a CN alone covers nothing)"
        raise ValueError(f"the certificate does not cover {host}; it names {has}: get one that names "
                         "every host of the tenant, or remove the host from tenant.yaml")


# -- reading certificates -----------------------------------------------------------------

def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _trust_store(trusted_roots: Path | None) -> tuple[x509.Certificate, ...]:
    if trusted_roots is None:
        return _system_roots()
    try:
        stat = trusted_roots.stat()
        version = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        version = None  # _read names the problem
    return _system_roots() + _private_roots(trusted_roots, version)


@functools.lru_cache(maxsize=4)
def _private_roots(trusted_roots: Path, version: tuple | None) -> tuple[x509.Certificate, ...]:
    """tls.trusted_roots, parsed once per version of the file, not once per tenant."""
    extra = _load_each(_read(trusted_roots, "tls.trusted_roots of tenantkit.yaml"))
    if not extra:
        raise ValueError(f"the trusted roots file {display_path(trusted_roots)} holds no PEM "
                         "certificate: give the private CA's certificate in PEM")
    return extra


@functools.lru_cache(maxsize=1)
def _system_roots() -> tuple[x509.Certificate, ...]:
    """The host's CA bundle, else certifi's, else none; read once per process."""
    bundle: Path | None = SYSTEM_BUNDLE if SYSTEM_BUNDLE.exists() else None
    if bundle is None:
        try:
            import certifi
            bundle = Path(certifi.where())
        except ImportError:
            return ()
    try:
        return _load_each(bundle.read_bytes())
    except OSError:
        return ()


def _load_each(data: bytes) -> tuple[x509.Certificate, ...]:
    """Every certificate of a bundle that parses: one odd root must not hide all the others."""
    end = b"-----END CERTIFICATE-----"
    certs = []
    with warnings.catch_warnings():  # an old root's negative serial number is not the operator's to fix
        warnings.simplefilter("ignore")
        for block in data.split(end)[:-1]:
            try:
                certs.append(x509.load_pem_x509_certificate(block + end))
            except ValueError:
                continue
    return tuple(certs)


def _describe(leaf: x509.Certificate, chain_length: int) -> Certificate:
    return Certificate(subject=leaf.subject.rfc4514_string(), issuer=leaf.issuer.rfc4514_string(),
                       hosts=tuple(_dns_names(leaf)), not_after=_valid_until(leaf),
                       chain_length=chain_length)


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.DNSName)


def _cn(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else name.rfc4514_string()


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _valid_from(cert: x509.Certificate) -> dt.datetime:
    # not_valid_*_utc arrived in cryptography 42; 41 has only the naive UTC attributes.
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=dt.timezone.utc)


def _valid_until(cert: x509.Certificate) -> dt.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=dt.timezone.utc)


def _utc_now(now: dt.datetime | None) -> dt.datetime:
    """`now` as aware UTC (a naive one is taken as UTC), or the current time."""
    if now is None:
        return dt.datetime.now(dt.timezone.utc)
    return now.replace(tzinfo=dt.timezone.utc) if now.tzinfo is None else now.astimezone(dt.timezone.utc)


def _normal_host(host: str) -> str:
    host = host.lower().rstrip(".")
    try:
        return host.encode("idna").decode("ascii")  # certificates name IDNs by their A-labels
    except UnicodeError:
        return host
