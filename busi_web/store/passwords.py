"""The password rules: long enough, not a common password, not the user name, hard to guess.

The common passwords are the 30,000 of zxcvbn's bundled frequency list (from
leaked password dumps), and zxcvbn also estimates how many guesses a password
takes (its score 0-4, with the user name as a known input). Both are local:
nothing is looked up on a network.
"""

from __future__ import annotations

import secrets
import string
from functools import lru_cache

from busi_web.errors import UserError

MIN_LENGTH = 12
ZXCVBN_MAX = 72  # zxcvbn refuses longer input; a longer passphrase is judged on its first 72 characters
# The product's and the field's own words: the first guesses of anyone who attacks this server.
PRODUCT_WORDS = ("busi", "web", "busiweb", "breast", "cancer", "ultrasound", "sono", "sonography", "mammo",
                 "mammogram", "mammography", "radiology", "radiologist", "hospital", "clinic", "clinician", "admin",
                 "lesion", "benign", "malignant", "normal", "tumor", "tumour", "biopsy", "birads", "password")
# zxcvbn's score: 3 is "safely unguessable" (about 10^8 guesses or more), 4 "very unguessable".
MIN_SCORE = 3
RULES = (f"at least {MIN_LENGTH} characters, not a common password, not containing the user name, and not "
         "easy to guess (e.g. three or four unrelated words)")


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The bundled list of common passwords (lower case)."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS  # 30,000 words: loaded at the first password check

    return frozenset(p.lower() for p in FREQUENCY_LISTS["passwords"])


def password_problem(password: str, name: str | None = None) -> str | None:
    """What is wrong with ``password`` for user ``name`` (a sentence), or ``None`` when it may be used."""
    password = password or ""
    if len(password) < MIN_LENGTH:
        return f"the password must have at least {MIN_LENGTH} characters (it has {len(password)})"
    lowered = password.lower()
    core = lowered.strip(string.digits + string.punctuation + " ")
    if lowered in common_passwords() or (core and core in common_passwords()):
        return "that is one of the most common passwords; choose another"
    if name and len(name) >= 3 and name.lower() in lowered:
        return "the password must not contain the user name"
    letters = "".join(c for c in lowered if c.isalpha())
    if letters and _made_of(letters, PRODUCT_WORDS + ((name.lower(),) if name else ())):
        return "the password is made of this product's own words (busi-web, breast, cancer, ...); choose others"
    from zxcvbn import zxcvbn  # loaded at the first password check, not at every start

    verdict = zxcvbn(password[:ZXCVBN_MAX], user_inputs=[*PRODUCT_WORDS, *([name] if name else [])])
    if verdict["score"] < MIN_SCORE:
        hint = verdict["feedback"].get("warning") or "it follows a pattern that is easy to guess"
        return f"the password is too easy to guess ({hint.rstrip('.')}); try three or four unrelated words"
    return None


def _made_of(letters: str, words: tuple[str, ...]) -> bool:
    """Whether ``letters`` is a run of ``words`` end to end (a word may repeat)."""
    reachable = [True] + [False] * len(letters)
    for end in range(1, len(letters) + 1):
        reachable[end] = any(reachable[end - len(w)] and letters.endswith(w, 0, end) for w in words if len(w) <= end)
    return reachable[-1]


def require_strong(password: str, name: str | None = None) -> None:
    """Raise a 400 :class:`UserError` (field ``password``) when ``password`` breaks the rules."""
    problem = password_problem(password, name)
    if problem is not None:
        raise UserError(problem, 400, {"password": RULES})


def one_time_password() -> str:
    """A random password that passes the rules (for invitations, resets and the first admin)."""
    while True:
        password = secrets.token_urlsafe(12)
        if password_problem(password) is None:
            return password
