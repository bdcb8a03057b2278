module notify/services/producer

go 1.26

replace (
	notify/pkg => ../../pkg
	notify/proto => ../../proto
)
