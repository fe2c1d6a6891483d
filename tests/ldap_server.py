"""A throwaway OpenLDAP directory (Debian's slapd) on 127.0.0.1, for the directory-login tests."""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port, wait_for

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
        proc.terminate()
        proc.wait(30)
