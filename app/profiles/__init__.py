"""The profile API: a customer's identifiers, stage, timeline and identity ledger."""
