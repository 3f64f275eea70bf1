module lameduck.bench/go-run

go 1.19
