-- Adds a job to a group's stream, unless the stream already holds the most jobs it may.
-- Workers delete each job once it is done, so the stream's length is the backlog: jobs not
-- taken yet and jobs being handled.
-- KEYS[1]: the group's stream
-- ARGV[1]: the most jobs the stream may hold (WorkerOptions::max_backlog)
-- ARGV[2]: the job (JSON)
-- Returns 1 when added, 0 when the backlog is full.
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('XADD', KEYS[1], '*', 'j', ARGV[2])
return 1
