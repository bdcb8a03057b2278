module notify/services/retrier

go 1.26

replace (
	notify/pkg => ../../pkg
	notify/proto => ../../proto
)
