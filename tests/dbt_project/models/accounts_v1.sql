select 1 as account_id, 'old' as plan
