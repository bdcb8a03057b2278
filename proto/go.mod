module notify/proto

go 1.26
