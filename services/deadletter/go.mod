module notify/services/deadletter

go 1.26

replace (
	notify/pkg => ../../pkg
	notify/proto => ../../proto
)
