"""Privacy: deletion and suppression of a customer, export, and consent."""
