"""Its explainer has a bug: every call raises."""

from busi_web import hookimpl
from busi_web.specs import ExplainerSpec


class Failing:
    def explain(self, model, images, targets, target_layer):
        raise ZeroDivisionError("the broken explainer divided by zero")


@hookimpl
def register_explainers():
    return [ExplainerSpec(name="broken_explainer", title="Broken", description="Raises on every call.",
                          factory=Failing)]
