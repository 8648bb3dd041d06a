module trackpoint.bench/peer

go 1.19
