def load_teacher(name, **options):
    raise NotImplementedError
