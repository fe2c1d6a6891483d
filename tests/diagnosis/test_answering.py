"""Which model answers is kept between diagnoses, and let go the moment anything that decides it changes, even when
the change is made by another process (another web worker or host on the same store)."""

from __future__ import annotations

from busi_web import create_app
from tests.helpers import ADMIN, CLINICIAN, finished_run, image_bytes, make_user_client, upload


def diagnose(client) -> dict:
    answer = client.post("/api/predict", data=upload((image_bytes(hw=(40, 40)), "scan.png"), explainer="none"))
    assert answer.status_code in (200, 403, 409), answer.get_json()
    return {"status": answer.status_code, **(answer.get_json() or {})}


def test_the_answering_model_is_kept_and_follows_a_change_made_by_another_process(app_config):
    here = create_app(app_config)
    elsewhere = create_app(app_config)  # a second process on the same store
    store = here.extensions["busi_web"].store
    first = finished_run(store, promote=True)
    second = finished_run(store, seed=1)
    clinician = make_user_client(here, *CLINICIAN, "clinician")
    cache = here.extensions["busi_web"].answering

    assert diagnose(clinician)["run_id"] == first["id"]
    worked_out = cache.misses
    for _ in range(3):
        assert diagnose(clinician)["model"]["run_id"] == first["id"]
    assert cache.misses == worked_out  # kept: no card, no verdict, no default looked up again

    # An admin of the other process makes the second model the default: the next answer is the second model's.
    admin = make_user_client(elsewhere, *ADMIN, "admin")
    promoted = admin.post(f"/api/runs/{second['id']}/promote", json={"reason": "a better model"})
    assert promoted.status_code == 200, promoted.get_json()
    answer = diagnose(clinician)
    assert answer["run_id"] == second["id"] and answer["model"]["default_of"] == "ultrasound"
    assert answer["model"]["verdict"]["accepted"] is True and cache.misses == worked_out + 1

    # Cleared there: here a clinician is told there is no model, at once.
    cleared = admin.delete("/api/modalities/ultrasound/default", json={"reason": "withdrawn"})
    assert cleared.status_code == 200, cleared.get_json()
    gone = diagnose(clinician)
    assert gone["status"] == 409 and "no default ultrasound model" in gone["error"]
    # And asking for the first model by name: no longer accepted for a clinician (it is not the default).
    asked = clinician.post("/api/predict", data=upload((image_bytes(hw=(40, 40)), "scan.png"), explainer="none",
                                                       run_id=str(first["id"])))
    assert asked.status_code == 403 and "not accepted" in asked.get_json()["error"]
