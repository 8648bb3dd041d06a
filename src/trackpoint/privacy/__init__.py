"""The privacy policy: what each collector may receive, consent signals (GPC, DNT, TCF v2, US Privacy), keyed
pseudonyms and the first-party user id cookie. Everything here is compiled at start-up; the request path only calls it.
"""
