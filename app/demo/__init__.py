"""`journeys demo`: synthetic but realistic customer journeys, sent through the HTTP API."""
