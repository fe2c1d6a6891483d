"""The real servers tests start on 127.0.0.1: gunicorn (``busi-web serve``) on a fresh instance, and a throwaway
OpenLDAP directory (Debian's slapd) for the directory-login tests."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from busi_web.store import JobStore
from tests.browser_steps import Server
from tests.helpers import ADMIN, CLINICIAN, wait_for


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Ask a server to stop (SIGTERM); kill it when it has not within 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def served(home: Path, env: dict[str, str] | None = None, threads: int = 8):
    """A real gunicorn (``busi-web serve``) on a free port of 127.0.0.1 with a fresh instance under ``home``, an
    admin (with an API token) and a clinician; ``env`` adds settings (with ``BUSI_WEB_DATABASE_URL``, the users
    go into that database, once: a second server on it finds them there). Its trainers die with it."""
    import signal

    instance = home / "instance"
    instance.mkdir(parents=True, exist_ok=True)
    env = dict(env or {})
    store = JobStore(env.get("BUSI_WEB_DATABASE_URL") or instance / "busi.db",
                     env.get("BUSI_WEB_RUNS_DIR") or instance / "runs")
    if store.get_user(ADMIN[0]) is None:
        store.add_user(ADMIN[0], "admin", ADMIN[1])
        store.add_user(CLINICIAN[0], "clinician", CLINICIAN[1])
    token = store.create_token(ADMIN[0], "tests")
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BUSI_WEB_")}
    full_env.update({"BUSI_WEB_INSTANCE_PATH": str(instance), "BUSI_WEB_AUTO_FIRST_RUN": "false",
                     "BUSI_WEB_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
                     **(env or {})})
    log = home / "server.log"
    exe = Path(sys.executable).with_name("busi-web")
    with open(log, "w") as out:
        proc = subprocess.Popen([str(exe), "serve", "--port", str(port), "--threads", str(threads)], env=full_env,
                                cwd=home, stdout=out, stderr=subprocess.STDOUT)
    srv = Server(f"http://127.0.0.1:{port}", token, instance, proc, log)
    try:
        wait_for(lambda: _answers(srv, proc, log), timeout=120, what="gunicorn to answer", interval=0.3)
        yield srv
    finally:
        for run in store.list_runs(status="running"):  # trainers this server started must not outlive it
            if run.get("pid"):
                try:
                    os.killpg(run["pid"], signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        stop(proc)


def _answers(srv: Server, proc: subprocess.Popen, log: Path) -> bool:
    import urllib.error

    if proc.poll() is not None:
        raise AssertionError("gunicorn exited:\n" + log.read_text()[-3000:])
    try:
        srv.api("/api/health")
        return True
    except (OSError, urllib.error.URLError):
        return False



LDAP_BASE = "dc=busi,dc=test"
LDAP_SERVICE = (f"cn=service,{LDAP_BASE}", "service-secret-7")
LDAP_ADMINS = f"cn=busi-admins,ou=groups,{LDAP_BASE}"
LDAP_CLINICIANS = f"cn=busi-clinicians,ou=groups,{LDAP_BASE}"
# name -> (password, groups)
LDAP_PEOPLE = {"dr.lee": ("copper-violet-33", [LDAP_ADMINS]), "nurse.kim": ("maple-lantern-58", [LDAP_CLINICIANS]),
               "visitor.ray": ("orchid-tunnel-64", []), "admin": ("tawny-glacier-61", [LDAP_ADMINS])}


@dataclass
class Slapd:
    url: str
    proc: subprocess.Popen

    def settings(self, **extra) -> dict:
        """The app settings that point at this directory."""
        return {"LDAP_URL": self.url, "LDAP_USER_BASE": f"ou=people,{LDAP_BASE}", "LDAP_BIND_DN": LDAP_SERVICE[0],
                "LDAP_BIND_PASSWORD": LDAP_SERVICE[1], "LDAP_ADMIN_GROUP": LDAP_ADMINS,
                "LDAP_CLINICIAN_GROUP": LDAP_CLINICIANS, "LDAP_TIMEOUT": 3, **extra}

    def move(self, name: str, source: str, target: str) -> None:
        """Move ``name`` from group ``source`` to group ``target`` (as the directory's administrator does)."""
        from ldap3 import MODIFY_ADD, MODIFY_DELETE, Connection

        dn = f"uid={name},ou=people,{LDAP_BASE}"
        with Connection(self.url, user=LDAP_SERVICE[0], password=LDAP_SERVICE[1], auto_bind=True) as conn:
            assert conn.modify(target, {"member": [(MODIFY_ADD, [dn])]}), conn.result
            assert conn.modify(source, {"member": [(MODIFY_DELETE, [dn])]}), conn.result


def _ldif() -> str:
    groups: dict[str, list[str]] = {LDAP_ADMINS: [], LDAP_CLINICIANS: []}
    entries = [f"dn: {LDAP_BASE}\nobjectClass: dcObject\nobjectClass: organization\no: busi test\ndc: busi",
               f"dn: ou=people,{LDAP_BASE}\nobjectClass: organizationalUnit\nou: people",
               f"dn: ou=groups,{LDAP_BASE}\nobjectClass: organizationalUnit\nou: groups"]
    for name, (password, member_of) in LDAP_PEOPLE.items():
        dn = f"uid={name},ou=people,{LDAP_BASE}"
        entries.append(f"dn: {dn}\nobjectClass: inetOrgPerson\nuid: {name}\ncn: {name.title()}\nsn: {name}\n"
                       f"userPassword: {password}")
        for group in member_of:
            groups[group].append(dn)
    for group, members in groups.items():
        cn = group.split(",")[0].split("=")[1]
        members = [*members, LDAP_SERVICE[0]]  # groupOfNames needs a member, even when its people move away
        entries.append(f"dn: {group}\nobjectClass: groupOfNames\ncn: {cn}\n"
                       + "\n".join(f"member: {m}" for m in members))
    return "\n\n".join(entries) + "\n"


@contextmanager
def slapd(home: Path):
    """Debian's slapd on a free port of 127.0.0.1 with a throwaway directory under ``home``: the people of
    :data:`LDAP_PEOPLE` in ``ou=people``, the two busi-web groups in ``ou=groups``, and a service account."""
    import shutil

    exe = shutil.which("slapd") or ("/usr/sbin/slapd" if Path("/usr/sbin/slapd").exists() else None)
    if exe is None:
        import pytest

        pytest.skip("Debian's slapd is not installed (run `make slapd`, i.e. apt-get install slapd)")
    db = home / "ldap-db"
    db.mkdir(parents=True)
    conf = home / "slapd.conf"
    schema = "/etc/ldap/schema"
    conf.write_text("\n".join([
        *(f"include {schema}/{name}.schema" for name in ("core", "cosine", "inetorgperson", "nis")),
        "modulepath /usr/lib/ldap", "moduleload back_mdb", f"pidfile {home}/slapd.pid",
        "database mdb", "maxsize 10485760", f'suffix "{LDAP_BASE}"', f'rootdn "{LDAP_SERVICE[0]}"',
        f"rootpw {LDAP_SERVICE[1]}", f"directory {db}",
        "access to attrs=userPassword by anonymous auth by self write by * none", "access to * by * read", ""]))
    (home / "people.ldif").write_text(_ldif())
    subprocess.run([str(Path(exe).with_name("slapadd")), "-f", str(conf), "-l", str(home / "people.ldif")],
                   check=True, capture_output=True)
    port = free_port()
    url = f"ldap://127.0.0.1:{port}"
    proc = subprocess.Popen([exe, "-f", str(conf), "-h", f"{url}/", "-d", "0"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        import socket

        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError("slapd exited at start")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, timeout=30, what="slapd to listen", interval=0.1)
        yield Slapd(url, proc)
    finally:
        stop(proc)


# -- a PACS: Debian's Orthanc with its DICOMweb plugin -----------------------------------------------------------
ORTHANC_USER = ("busi-web", "pacs-secret-41")
LOCKED_PATIENT = "PID-LOCKED"  # the test PACS refuses to store busi-web's results for this patient
ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass
class Orthanc:
    url: str  # the DICOMweb root
    rest: str  # Orthanc's own REST API
    proc: subprocess.Popen

    def settings(self, **extra) -> dict:
        """A PACS_SERVERS entry for this PACS."""
        return {"url": self.url, "auth": "basic", "username": ORTHANC_USER[0], "password": ORTHANC_USER[1],
                "timeout": 5, **extra}

    def client(self):
        """A dicomweb-client of this PACS, as its own administrator (to load studies and read back)."""
        import requests
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        session.auth = ORTHANC_USER
        return DICOMwebClient(self.url, session=session)

    def load(self, *datasets) -> None:
        """Store ``datasets`` (Part 10: with a preamble) as a modality would."""
        for ds in datasets:
            ds.preamble = b"\0" * 128
        answer = self.client().store_instances(list(datasets))
        assert not answer.get("FailedSOPSequence"), answer


@contextmanager
def orthanc(home: Path):
    """Debian's Orthanc with the DICOMweb plugin on a free port of 127.0.0.1: a temporary storage folder, basic
    auth (:data:`ORTHANC_USER`), no DICOM port, and a Lua filter that refuses busi-web's results for
    :data:`LOCKED_PATIENT` (a study the PACS will not take results for)."""
    import shutil

    exe = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    if exe is None or not ORTHANC_PLUGIN.exists():
        import pytest

        pytest.skip("Debian's orthanc and orthanc-dicomweb are not installed (run `make orthanc`)")
    home.mkdir(parents=True, exist_ok=True)
    (home / "filter.lua").write_text(
        "function ReceivedInstanceFilter(dicom, origin, info)\n"
        f"  if dicom.PatientID == '{LOCKED_PATIENT}' and string.sub(dicom.SeriesDescription or '', 1, 8) == "
        "'busi-web' then return false end\n"
        "  return true\nend\n")
    port = free_port()
    config = {"Name": "busi-web-tests", "StorageDirectory": str(home / "storage"),
              "IndexDirectory": str(home / "storage"), "HttpPort": port, "DicomServerEnabled": False,
              "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
              "RegisteredUsers": {ORTHANC_USER[0]: ORTHANC_USER[1]}, "Plugins": [str(ORTHANC_PLUGIN)],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
              "LuaScripts": [str(home / "filter.lua")], "StorageCompression": False,
              # Names in any script (a Greek patient's), as a hospital's PACS is set up.
              "DefaultEncoding": "Utf8"}
    import json

    (home / "orthanc.json").write_text(json.dumps(config))
    log = home / "orthanc.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, str(home / "orthanc.json")], stdout=out, stderr=subprocess.STDOUT)
    rest = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        import requests

        if proc.poll() is not None:
            raise AssertionError("Orthanc exited at start:\n" + log.read_text()[-3000:])
        try:
            return requests.get(rest + "/system", auth=ORTHANC_USER, timeout=2).status_code == 200
        except requests.exceptions.RequestException:
            return False

    try:
        wait_for(answers, timeout=60, what="Orthanc to answer", interval=0.2)
        yield Orthanc(url=f"{rest}/dicom-web", rest=rest, proc=proc)
    finally:
        stop(proc)


# -- PostgreSQL and Redis: what several hosts share -------------------------------------------------------------
PG_BIN = Path("/usr/lib/postgresql")


def _pg_bin(name: str) -> str | None:
    import shutil

    versions = sorted(PG_BIN.glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    for folder in reversed(versions):
        if (folder / name).exists():
            return str(folder / name)
    return shutil.which(name)


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust authentication, for tests only)."""

    port: int
    proc: subprocess.Popen
    user: str = "busi"

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new, empty database; returns its URL."""
        import secrets

        import psycopg

        name = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: then it runs as Debian's ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@contextmanager
def postgres():
    """Debian's PostgreSQL: a cluster of its own in a temporary folder, on a free port of 127.0.0.1."""
    import shutil
    import tempfile

    initdb, server = _pg_bin("initdb"), _pg_bin("postgres")
    if initdb is None or server is None:
        import pytest

        pytest.skip("Debian's postgresql is not installed (run `make postgresql`)")
    home = Path(tempfile.mkdtemp(prefix="busi-pg-"))
    data = home / "data"
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
    run_as = _as_postgres_user()
    subprocess.run([*run_as, initdb, "-D", str(data), "-U", "busi", "--auth=trust", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True, timeout=120)
    port = free_port()
    log = home / "postgres.log"
    with open(log, "wb") as out:
        if os.geteuid() == 0:
            shutil.chown(log, "postgres", "postgres")
        proc = subprocess.Popen([*run_as, server, "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
                                 "-k", str(home), "-c", "fsync=off", "-c", "full_page_writes=off",
                                 "-c", "synchronous_commit=off", "-c", "max_connections=300"],
                                stdout=out, stderr=subprocess.STDOUT)
    cluster = Postgres(port=port, proc=proc)

    def answers() -> bool:
        import psycopg

        if proc.poll() is not None:
            raise AssertionError("PostgreSQL exited at start:\n" + log.read_text()[-3000:])
        try:
            psycopg.connect(cluster.url("postgres"), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    try:
        wait_for(answers, timeout=60, what="PostgreSQL to answer", interval=0.2)
        yield cluster
    finally:
        stop(proc)
        shutil.rmtree(home, ignore_errors=True)


@dataclass
class Redis:
    url: str
    proc: subprocess.Popen


@contextmanager
def redis_server(home: Path):
    """Debian's redis-server on a free port of 127.0.0.1, in memory only."""
    import shutil

    exe = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if exe is None:
        import pytest

        pytest.skip("Debian's redis-server is not installed (run `make redis`)")
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = home / "redis.log"
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(home), "--logfile", str(log)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"

    def answers() -> bool:
        import redis

        if proc.poll() is not None:
            raise AssertionError("redis-server exited at start:\n" + (log.read_text()[-3000:] if log.exists() else ""))
        try:
            return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
        except redis.exceptions.ConnectionError:
            return False

    try:
        wait_for(answers, timeout=30, what="Redis to answer", interval=0.1)
        yield Redis(url=url, proc=proc)
    finally:
        stop(proc)
