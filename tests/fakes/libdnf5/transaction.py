"""libdnf5.transaction: TransactionItemAction (SWIG flattens the C++ enum into module constants)
and the inbound/outbound predicates of include/libdnf5/transaction/transaction_item_action.hpp."""

from __future__ import annotations

TransactionItemAction_INSTALL = 1
TransactionItemAction_UPGRADE = 2
TransactionItemAction_DOWNGRADE = 3
TransactionItemAction_REINSTALL = 4
TransactionItemAction_REMOVE = 5
TransactionItemAction_REPLACED = 6
TransactionItemAction_REASON_CHANGE = 7
TransactionItemAction_ENABLE = 8
TransactionItemAction_DISABLE = 9
TransactionItemAction_RESET = 10
TransactionItemAction_SWITCH = 11

_INBOUND = {
    TransactionItemAction_INSTALL,
    TransactionItemAction_UPGRADE,
    TransactionItemAction_DOWNGRADE,
    TransactionItemAction_REINSTALL,
}
_OUTBOUND = {TransactionItemAction_REMOVE, TransactionItemAction_REPLACED}
_LETTERS = {
    TransactionItemAction_INSTALL: "I",
    TransactionItemAction_UPGRADE: "U",
    TransactionItemAction_DOWNGRADE: "D",
    TransactionItemAction_REINSTALL: "R",
    TransactionItemAction_REMOVE: "E",
    TransactionItemAction_REPLACED: "O",
}


def transaction_item_action_is_inbound(action: int) -> bool:
    return action in _INBOUND


def transaction_item_action_is_outbound(action: int) -> bool:
    return action in _OUTBOUND


def transaction_item_action_to_letter(action: int) -> str:
    return _LETTERS.get(action, "?")
