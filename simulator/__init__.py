"""Development and test doubles of the external services Caseflow talks to; never deployed to production."""
