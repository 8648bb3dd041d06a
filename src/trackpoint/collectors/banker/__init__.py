"""The banker: budget management as a built-in plugin (a collector, its stores and admin routes).

Spend events (win or billing notices, or impressions) become debits of their campaign's budget, each event id at
most once, in Redis (shared by every tracker) or SQLite (the embedded default). Bidders read a campaign's state in
one round trip and hear when a budget runs out.
"""
