"""What a method may call: its public face, at the import path methods use.

A method receives a :class:`RunContext` as the one argument of its entry point and may import these names
from here to catch the errors it raises. The context itself lives in :mod:`harness.confined.context`
because it runs in the method's own, confined process; this module only names it, so the path stays put
whatever the harness's folders become.
"""

from harness.confined.context import RunContext
from harness.errors import BudgetExhausted, ContractError, Diverged, TimeExhausted

__all__ = ["RunContext", "BudgetExhausted", "TimeExhausted", "Diverged", "ContractError"]
