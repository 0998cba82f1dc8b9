DROP TABLE job_clients;
