module lameduck.bench/go-shutdown

go 1.19
