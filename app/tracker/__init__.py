"""The first-party browser tracker (`journeys.js`) and the route that serves it."""
