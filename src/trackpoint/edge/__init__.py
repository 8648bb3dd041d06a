"""The tracking edge: HTTP/1.1 on uvloop + httptools, worker processes and their supervisor."""
