"""The HTTP/1.1 protocol shared by the tracking edge and the admin port: limits, timeouts, framing, responses.

`connection.py` is one connection over httptools (llhttp); `limits.py` the caps it checks; `responses.py` the status
lines, headers and the small error answers with a reason code.
"""
