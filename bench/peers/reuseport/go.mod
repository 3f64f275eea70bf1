module lameduck.bench/reuseport

go 1.19
